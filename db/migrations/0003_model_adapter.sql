-- A model trained by the command trainer is served by the inference backend
-- as a LoRA adapter of this name; NULL for builtin models, served in-process.
ALTER TABLE deployed_models ADD COLUMN adapter text;
