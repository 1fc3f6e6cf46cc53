-- The trainer a training worker runs ('builtin' or 'command', as
-- TUNEFORGE_TRAINER names it), so a job's validation can check what the
-- trainers of its pool need: only the builtin trainer refuses free-text
-- replies. '' is a worker that advertised before this column existed (or
-- one whose binary predates it): its trainer is unknown.
ALTER TABLE gpu_workers ADD COLUMN trainer text NOT NULL DEFAULT '';
