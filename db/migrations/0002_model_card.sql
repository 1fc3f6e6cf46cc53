-- A deployed model's card says what was trained, on what, and how well.
ALTER TABLE deployed_models ADD COLUMN card text NOT NULL DEFAULT '';
