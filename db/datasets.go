package db

import (
	"context"
	"fmt"
	"time"

	"github.com/tuneforge/tuneforge/db/dbsqlc"
	"github.com/tuneforge/tuneforge/jobstatus"
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
	// Stats is what the upload's validation found; nil for a dataset
	// uploaded before it was recorded.
	Stats *DatasetStats
}

// DatasetStats is what validating a dataset's file found.
type DatasetStats struct {
	Examples  int
	Tokens    int64
	MaxTokens int // of the longest example
	// LabelProblem is why the builtin trainer could not learn the file's
	// labels, "" when it can.
	LabelProblem string
	// Format is the file's line format (dataset.Format's values); "" for
	// a dataset uploaded before it was recorded.
	Format string
}

func datasetStats(examples *int32, tokens *int64, maxTokens *int32, labelProblem, format *string) *DatasetStats {
	if examples == nil || tokens == nil || maxTokens == nil || labelProblem == nil {
		return nil
	}
	return &DatasetStats{Examples: int(*examples), Tokens: *tokens, MaxTokens: int(*maxTokens), LabelProblem: *labelProblem, Format: deref(format)}
}

func datasetFromRow(r dbsqlc.Dataset) Dataset {
	return Dataset{
		ID: r.ID, OrganizationID: r.OrganizationID, Filename: r.Filename, Bytes: r.Bytes, SHA256: r.Sha256,
		BlobKey: r.BlobKey, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt.UTC(),
		Stats: datasetStats(r.Examples, r.Tokens, r.MaxTokens, r.LabelProblem, r.Format),
	}
}

// DatasetStatsOf is what the upload found in the file at blobKey: nil when
// no dataset has that file or its stats were not recorded.
func (c Conn) DatasetStatsOf(ctx context.Context, blobKey string) (*DatasetStats, error) {
	r, err := c.q.DatasetStatsByBlobKey(ctx, c.db, blobKey)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read dataset stats: %w", err)
	}
	return datasetStats(r.Examples, r.Tokens, r.MaxTokens, r.LabelProblem, r.Format), nil
}

// DatasetBlobKeys says which of keys are datasets' objects.
func (c Conn) DatasetBlobKeys(ctx context.Context, keys []string) (map[string]bool, error) {
	rows, err := c.q.DatasetBlobKeysIn(ctx, c.db, keys)
	if err != nil {
		return nil, fmt.Errorf("look up dataset objects: %w", err)
	}
	out := make(map[string]bool, len(rows))
	for _, k := range rows {
		out[k] = true
	}
	return out, nil
}

// Dataset reads one of the organization's datasets; ErrNotFound when it has
// none of that ID.
func (c Conn) Dataset(ctx context.Context, org, id string) (Dataset, error) {
	r, err := c.q.GetDataset(ctx, c.db, dbsqlc.GetDatasetParams{OrganizationID: org, ID: id})
	if err != nil {
		return Dataset{}, fmt.Errorf("read dataset %s: %w", id, NotFound(err))
	}
	return datasetFromRow(r), nil
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
		out[i] = datasetFromRow(r)
	}
	return out, count, nil
}

// DatasetUsage is what an organization's datasets take up.
type DatasetUsage struct {
	Datasets int64
	Bytes    int64
}

// DatasetUsage reads how many datasets the organization has, and their
// total size.
func (c Conn) DatasetUsage(ctx context.Context, org string) (DatasetUsage, error) {
	r, err := c.q.DatasetUsage(ctx, c.db, org)
	if err != nil {
		return DatasetUsage{}, fmt.Errorf("read dataset usage: %w", err)
	}
	return DatasetUsage{Datasets: r.Datasets, Bytes: r.Bytes}, nil
}

// LockDatasetQuota holds the organization's dataset quota until the
// transaction ends, so that parallel uploads check and insert one at a time
// and cannot overshoot it. Only useful inside Store.Transact.
func (c Conn) LockDatasetQuota(ctx context.Context, org string) error {
	if err := c.q.LockDatasetQuota(ctx, c.db, org); err != nil {
		return fmt.Errorf("lock dataset quota: %w", err)
	}
	return nil
}

// CreateDataset records d and returns it as stored; d.CreatedAt is
// ignored, the row's is the time of the insert.
func (c Conn) CreateDataset(ctx context.Context, d Dataset) (Dataset, error) {
	p := dbsqlc.CreateDatasetParams{
		ID: d.ID, OrganizationID: d.OrganizationID, Filename: d.Filename, Bytes: d.Bytes, Sha256: d.SHA256,
		BlobKey: d.BlobKey, CreatedBy: d.CreatedBy,
	}
	if st := d.Stats; st != nil {
		examples, maxTokens := int32(st.Examples), int32(st.MaxTokens)
		p.Examples, p.Tokens, p.MaxTokens, p.LabelProblem = &examples, &st.Tokens, &maxTokens, &st.LabelProblem
		if st.Format != "" {
			p.Format = &st.Format
		}
	}
	r, err := c.q.CreateDataset(ctx, c.db, p)
	if err != nil {
		return Dataset{}, fmt.Errorf("record dataset: %w", err)
	}
	return datasetFromRow(r), nil
}

// LockDataset reads one of the organization's datasets and holds it until
// the transaction ends: a job being created with it waits (the
// jobs_dataset_exists trigger), so none starts using it unseen. ErrNotFound
// when the organization has none of that ID.
func (c Conn) LockDataset(ctx context.Context, org, id string) (Dataset, error) {
	r, err := c.q.LockDataset(ctx, c.db, dbsqlc.LockDatasetParams{OrganizationID: org, ID: id})
	if err != nil {
		return Dataset{}, fmt.Errorf("lock dataset %s: %w", id, NotFound(err))
	}
	return datasetFromRow(r), nil
}

// JobRef names a job and its status.
type JobRef struct {
	ID     string
	Status jobstatus.Status
}

// JobsReading lists the organization's jobs that may still read the
// dataset (in jobstatus.MayTrain), for training or validation: at most
// limit of them, oldest first, and how many there are in all.
func (c Conn) JobsReading(ctx context.Context, org, datasetID string, limit int) ([]JobRef, int64, error) {
	rows, err := c.q.ListJobsReadingDataset(ctx, c.db, dbsqlc.ListJobsReadingDatasetParams{
		OrganizationID: org, DatasetID: datasetID, Statuses: jobstatus.Strings(jobstatus.MayTrain), Lim: int32(limit),
	})
	if err != nil {
		return nil, 0, fmt.Errorf("find the jobs using dataset %s: %w", datasetID, err)
	}
	out, total := jobRefs(rows, func(r dbsqlc.ListJobsReadingDatasetRow) (string, jobstatus.Status, int64) {
		return r.ID, r.Status, r.Total
	})
	return out, total, nil
}

// jobRefs is rows as JobRefs, and the count of all the rows matched,
// which every row carries.
func jobRefs[T any](rows []T, fields func(T) (id string, status jobstatus.Status, total int64)) ([]JobRef, int64) {
	out := make([]JobRef, len(rows))
	var total int64
	for i, r := range rows {
		out[i].ID, out[i].Status, total = fields(r)
	}
	return out, total
}

// DeleteDataset deletes one of the organization's datasets' row;
// ErrNotFound when it has none of that ID.
func (c Conn) DeleteDataset(ctx context.Context, org, id string) error {
	n, err := c.q.DeleteDataset(ctx, c.db, dbsqlc.DeleteDatasetParams{OrganizationID: org, ID: id})
	if err != nil {
		return fmt.Errorf("delete dataset %s: %w", id, err)
	}
	if n == 0 {
		return fmt.Errorf("delete dataset %s: %w", id, ErrNotFound)
	}
	return nil
}

// DatasetPage selects a page of an organization's datasets by cursor:
// those past the dataset After (when set) in the page's order.
type DatasetPage struct {
	OrganizationID string
	After          *string
	Limit          int
	NewestFirst    bool
}

// DatasetsAfter reads a page of datasets by cursor; an After that names
// none of the organization's datasets is ErrNotFound.
func (c Conn) DatasetsAfter(ctx context.Context, p DatasetPage) ([]Dataset, error) {
	if p.After != nil {
		if _, err := c.Dataset(ctx, p.OrganizationID, *p.After); err != nil {
			return nil, err
		}
	}
	var rows []dbsqlc.Dataset
	var err error
	if p.NewestFirst {
		rows, err = c.q.ListDatasetsNewestFirst(ctx, c.planned(), dbsqlc.ListDatasetsNewestFirstParams{OrganizationID: p.OrganizationID, After: p.After, Lim: int32(p.Limit)})
	} else {
		rows, err = c.q.ListDatasetsOldestFirst(ctx, c.planned(), dbsqlc.ListDatasetsOldestFirstParams{OrganizationID: p.OrganizationID, After: p.After, Lim: int32(p.Limit)})
	}
	if err != nil {
		return nil, fmt.Errorf("list datasets: %w", err)
	}
	out := make([]Dataset, len(rows))
	for i, r := range rows {
		out[i] = datasetFromRow(r)
	}
	return out, nil
}
