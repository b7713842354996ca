"""Stage 3, training an adapter: chat data files (`data`), the cached data set above the
adapter's layer (`cached_set`), losses (`losses`), the configs (`config`), the engine
(`engine.finetune`), the content-addressed cache (`cache`) and the command line
(`python -m mech.training`)."""
