"""Judges: the protocol and the paper's rates (`protocol`), the OpenAI-compatible judge
(`openai_judge`) with its HTTP client (`client`), SQLite cache (`cache`) and prompts (`prompts`),
and the command line (`python -m mech.evaluation.judges`). The exact toy judge is
`mech.toy.judge`. The protocol imports none of its implementations."""
