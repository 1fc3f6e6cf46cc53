-- How a job trains, what it starts from, and the metrics trainers report
-- beside the losses.

-- format: the line format the upload's validation found (chat,
-- prompt_completion or preference), which decides the methods that can
-- train the file; NULL for datasets uploaded before it was recorded, whose
-- jobs' validation reads the file.
ALTER TABLE datasets ADD COLUMN format text;

-- method: supervised (demonstrations) or dpo (preference pairs), with
-- dpo's beta. qlora: 4-bit (NF4) frozen base weights with LoRA adapters in
-- bf16. init_from: the job whose LoRA adapter training starts from (a
-- completed job of the same organization), NULL to start from the base
-- model; no foreign key, so that deleting that job later (once nothing can
-- train from it again) leaves the record.
ALTER TABLE jobs
    ADD COLUMN method text NOT NULL DEFAULT 'supervised' CHECK (method IN ('supervised', 'dpo')),
    ADD COLUMN dpo_beta double precision CHECK (dpo_beta > 0 AND dpo_beta <= 10),
    ADD COLUMN qlora boolean NOT NULL DEFAULT false,
    ADD COLUMN init_from text,
    ADD CONSTRAINT jobs_dpo_beta CHECK ((method = 'dpo') = (dpo_beta IS NOT NULL));
-- Finds the jobs that start from a job about to be deleted.
CREATE INDEX jobs_init_from ON jobs (init_from) WHERE init_from IS NOT NULL;

-- The trainer's own metrics at the step (numbers by name, such as DPO's
-- rewardMargin), from its progress, and those of the validation pass.
ALTER TABLE job_metrics
    ADD COLUMN metrics jsonb,
    ADD COLUMN validation_metrics jsonb;
