// Package benchdata writes jobs straight into the read model for the
// benchmarks, as the workflows would have left them, far faster than
// creating them through the API.
package benchdata

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
)

// loadJobs writes organization $1's jobs 1 to $3 on dataset $2, created a
// second apart in the order of their number, with IDs ftjob_<org>_<i>:
// statuses, base models and times vary, every 97th name says "support
// intents", every tenth description names a week, every 50th has metadata.
const loadJobs = `
INSERT INTO jobs (id, organization_id, owner, name, description, base_model, hardware_id, status, training_dataset,
  training_dataset_id, training_file, epochs, learning_rate, batch_size, warmup_steps, suffix,
  created_at, updated_at, started_at, finished_at, metadata)
SELECT 'ftjob_' || $1 || '_' || i, $1, 'u', 'job ' || i || CASE WHEN i % 97 = 0 THEN ' support intents' ELSE '' END,
  CASE WHEN i % 10 = 0 THEN 'tickets of week ' || (i % 52) ELSE '' END,
  (ARRAY['llama-3.1-8b','mistral-7b-v0.3','llama-3.1-70b'])[1 + i % 3], 'gpu-a100-40gb',
  (ARRAY['queued','running','completed','failed','stopped','deployed'])[1 + i % 6], $2, $2, 'train.jsonl',
  3, 0.0002, 8, 10, '', t, t, t + interval '1 minute', CASE WHEN i % 6 >= 2 THEN t + interval '1 hour' END,
  CASE WHEN i % 50 = 0 THEN '{"team":"search"}'::jsonb ELSE '{}'::jsonb END
FROM generate_series(1, $3::int) i, LATERAL (SELECT timestamptz '2025-01-01' + i * interval '1 second') AS at(t)`

// LoadJobs writes n jobs of org that train on the dataset datasetID (which
// must exist) in one statement.
func LoadJobs(ctx context.Context, pool *pgxpool.Pool, org, datasetID string, n int) error {
	if _, err := pool.Exec(ctx, loadJobs, org, datasetID, n); err != nil {
		return fmt.Errorf("load %d jobs of %s: %w", n, org, err)
	}
	return nil
}

// JobID is the ID LoadJobs gives org's job i.
func JobID(org string, i int) string { return fmt.Sprintf("ftjob_%s_%d", org, i) }
