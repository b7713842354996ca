"""Stage 4, measuring a finetune: question sets (`questions`), batched seeded sampling
(`generate`), judges and the paper's rates (`judges`), the KL data generator (`datagen`), and the
loss-landscape probes of an adapter: efficiency, stability, pre-training KL (`loss_landscape`)."""
