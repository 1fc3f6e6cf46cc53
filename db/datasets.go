package db

import (
	"context"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

// Dataset is an uploaded (or imported) JSONL file of an organization.
type Dataset struct {
	ID             string
	OrganizationID string
	Filename       string
	Bytes          int64
	SHA256         string
	// BlobKey is where the file lives in the artifact store.
	BlobKey   string
	CreatedBy string
	CreatedAt time.Time
}

// DatasetFromRow maps a dataset row; transactions that write datasets use
// it for the row they return.
func DatasetFromRow(r dbsqlc.Dataset) Dataset {
	return Dataset{
		ID: r.ID, OrganizationID: r.OrganizationID, Filename: r.Filename, Bytes: r.Bytes, SHA256: r.Sha256,
		BlobKey: r.BlobKey, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(),
	}
}

// Dataset reads one of the organization's datasets; ErrNotFound when it has
// none of that ID.
func (c Conn) Dataset(ctx context.Context, org, id string) (Dataset, error) {
	r, err := c.q.GetDataset(ctx, c.db, dbsqlc.GetDatasetParams{OrganizationID: org, ID: id})
	if err != nil {
		return Dataset{}, fmt.Errorf("read dataset %s: %w", id, NotFound(err))
	}
	return DatasetFromRow(r), nil
}

// Datasets lists a page of the organization's datasets, newest first, and
// how many it has in all.
func (c Conn) Datasets(ctx context.Context, org string, limit, offset int) ([]Dataset, int64, error) {
	rows, err := c.q.ListDatasets(ctx, c.db, dbsqlc.ListDatasetsParams{OrganizationID: org, Limit: int32(limit), Offset: int32(offset)})
	if err != nil {
		return nil, 0, fmt.Errorf("list datasets: %w", err)
	}
	count, err := c.q.CountDatasets(ctx, c.db, org)
	if err != nil {
		return nil, 0, fmt.Errorf("count datasets: %w", err)
	}
	out := make([]Dataset, len(rows))
	for i, r := range rows {
		out[i] = DatasetFromRow(r)
	}
	return out, count, nil
}
