-- What the upload's validation found, so a job's validation need not read
-- the file again (NULL for datasets uploaded before this column existed:
-- their jobs scan the file). label_problem is why the builtin trainer could
-- not learn the labels, '' when it can.
ALTER TABLE datasets
    ADD COLUMN examples      integer,
    ADD COLUMN tokens        bigint,
    ADD COLUMN max_tokens    integer,
    ADD COLUMN label_problem text;

CREATE INDEX datasets_blob_key ON datasets (blob_key);
