-- lora_rank: the rank of the LoRA adapter a job trains (the API's
-- hyperparameters.loraRank). Jobs from before it existed trained at
-- trainers/hf's default, 16; the memory check at creation weighs the
-- adapter at this rank, and a job that starts from another's adapter
-- takes that adapter's rank. At most 64: the vLLM backends' --max-lora-rank.
ALTER TABLE jobs
    ADD COLUMN lora_rank integer NOT NULL DEFAULT 16 CHECK (lora_rank BETWEEN 1 AND 64);
