package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/apikey"
	"github.com/tuneforge/tuneforge/artifacts"
	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/db"
	"github.com/tuneforge/tuneforge/trainer"
)

type datasetView struct {
	ID        string    `json:"id"`
	Filename  string    `json:"filename"`
	Bytes     int64     `json:"bytes"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"createdAt"`
	// Format is the file's line format: chat, prompt_completion or
	// preference (which the dpo method trains). Examples are its examples
	// (preference pairs), Tokens their approximate tokens, outputs
	// included. Null for a dataset uploaded before they were recorded.
	Format   *string `json:"format"`
	Examples *int    `json:"examples"`
	Tokens   *int64  `json:"tokens"`
}

func viewDataset(d db.Dataset) datasetView {
	v := datasetView{ID: d.ID, Filename: d.Filename, Bytes: d.Bytes, SHA256: d.SHA256, CreatedAt: d.CreatedAt}
	if st := d.Stats; st != nil {
		v.Examples, v.Tokens = &st.Examples, &st.Tokens
		if st.Format != "" {
			v.Format = &st.Format
		}
	}
	return v
}

// DatasetLimits bound the datasets of each organization.
type DatasetLimits struct {
	// MaxBytes is the size of one dataset, uploaded or imported; 0 means
	// defaultMaxDatasetBytes.
	MaxBytes int64
	// QuotaBytes and QuotaCount bound an organization's datasets' total
	// size and number; 0 means no limit.
	QuotaBytes, QuotaCount int64
}

const (
	defaultMaxDatasetBytes = 1 << 30
	// multipartOverhead is what a multipart body may carry besides the file.
	multipartOverhead = 1 << 20
)

func (s *Server) maxDatasetBytes() int64 {
	if s.Datasets.MaxBytes > 0 {
		return s.Datasets.MaxBytes
	}
	return defaultMaxDatasetBytes
}

// uploadDataset stores a JSONL file sent as the raw body (name in
// ?filename=) or as the "file" part of a multipart form. The body is
// streamed to the artifact store and checked line by line on the way, so a
// bad file is refused with line numbers and nothing is kept.
func (s *Server) uploadDataset(c *gin.Context) {
	up, err := s.readUpload(c)
	if err != nil {
		s.respondError(c, err)
		return
	}
	d, err := s.storeDataset(c.Request.Context(), caller(c), up.filename, up.src, up.size)
	// The upload may have outlasted the server's write timeout.
	s.extendWrite(c)
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusCreated, viewDataset(d))
}

// upload is a dataset file arriving in a request: the raw body, or the
// "file" part of a multipart form, whose other fields are read too.
type upload struct {
	filename string
	src      io.Reader
	size     int64 // -1 when not known beforehand
	form     *multipart.Reader
	// fields holds the form's other fields read so far: those before the
	// file, and after restOfForm, those after it.
	fields map[string]string
	// formFields and formBytes count the fields read, and their names' and
	// values' bytes, against maxFormFields and maxFormBytes.
	formFields, formBytes int
}

// readUpload opens the request's file, reading a multipart form's fields
// up to its "file" part.
func (s *Server) readUpload(c *gin.Context) (*upload, error) {
	maxBody := s.maxDatasetBytes() + multipartOverhead
	if c.Request.ContentLength > maxBody {
		return nil, errDatasetTooLarge(s.maxDatasetBytes())
	}
	body := http.MaxBytesReader(c.Writer, io.NopCloser(s.uploadBody(c)), maxBody)
	up := &upload{filename: c.Query("filename"), src: body, size: c.Request.ContentLength, fields: map[string]string{}}
	mediaType, params, _ := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if mediaType == "multipart/form-data" {
		if params["boundary"] == "" {
			return nil, badRequest("multipart body without a boundary")
		}
		up.form = multipart.NewReader(body, params["boundary"])
		part, err := up.readFields(true)
		if err != nil {
			return nil, err
		}
		if up.filename == "" {
			up.filename = part.FileName()
		}
		up.src, up.size = part, -1
	}
	up.filename = path.Base(strings.ReplaceAll(strings.TrimSpace(up.filename), `\`, "/"))
	if up.filename == "" || up.filename == "." || up.filename == "/" {
		up.filename = "dataset.jsonl"
	}
	if len(up.filename) > 255 {
		return nil, badRequest("filename must be at most 255 characters")
	}
	return up, nil
}

// Bounds on a form's fields other than the file, which are held in
// memory: one field's value, their number, and their names' and values'
// bytes together. The forms clients send carry a purpose at most.
const (
	maxFormField  = 4096
	maxFormFields = 32
	maxFormBytes  = 32 << 10
)

// readFields reads the form's fields into u.fields: up to the "file" part,
// which it returns, when toFile; else to the form's end.
func (u *upload) readFields(toFile bool) (*multipart.Part, error) {
	for {
		p, err := u.form.NextPart()
		if errors.Is(err, io.EOF) {
			if toFile {
				return nil, badRequest(`the multipart form has no "file" part`)
			}
			return nil, nil
		}
		if err != nil {
			return nil, uploadError(fmt.Errorf("malformed multipart body: %w", err))
		}
		if p.FormName() == "file" {
			if toFile {
				return p, nil
			}
			return nil, badRequest(`the multipart form has more than one "file" part`)
		}
		if u.formFields++; u.formFields > maxFormFields {
			return nil, formTooLarge(fmt.Sprintf("more than %d fields besides the file", maxFormFields))
		}
		b, err := io.ReadAll(io.LimitReader(p, maxFormField+1))
		if err != nil {
			return nil, uploadError(fmt.Errorf("malformed multipart body: %w", err))
		}
		if len(b) > maxFormField {
			return nil, badRequest("form field %q is longer than %d bytes", p.FormName(), maxFormField)
		}
		if u.formBytes += len(p.FormName()) + len(b); u.formBytes > maxFormBytes {
			return nil, formTooLarge(fmt.Sprintf("fields besides the file of more than %d bytes in all", maxFormBytes))
		}
		u.fields[p.FormName()] = string(b)
	}
}

// formTooLarge refuses a form whose fields besides the file exceed a bound.
func formTooLarge(what string) error {
	return newError(http.StatusRequestEntityTooLarge, "payload_too_large",
		`the multipart form has %s; send the "file" part and, for POST /v1/files, purpose=%s`, what, filePurpose)
}

// restOfForm reads the fields after the file, once it has been read.
func (u *upload) restOfForm() error {
	if u.form == nil {
		return nil
	}
	_, err := u.readFields(false)
	return err
}

// storeDataset streams src into the artifact store while validating it,
// then records it within the organization's quota. size is src's length
// when known beforehand, else -1. A dataset that fails leaves neither an
// object nor a row behind.
func (s *Server) storeDataset(ctx context.Context, key apikey.Key, filename string, src io.Reader, size int64) (db.Dataset, error) {
	org := key.OrganizationID
	quota := s.Datasets.QuotaBytes > 0 || s.Datasets.QuotaCount > 0
	var usage db.DatasetUsage
	if quota {
		var err error
		if usage, err = s.Store.DatasetUsage(ctx, org); err != nil {
			return db.Dataset{}, err
		}
		// Refused before a byte is read when the answer is already known.
		if err := s.checkQuota(usage, max(size, 0)); err != nil {
			return db.Dataset{}, err
		}
	}
	limit, tooLarge := s.maxDatasetBytes(), errDatasetTooLarge(s.maxDatasetBytes())
	if q := s.Datasets.QuotaBytes; q > 0 && q-usage.Bytes < limit {
		limit, tooLarge = q-usage.Bytes, s.quotaError(usage, "this dataset is larger than the space left")
	}
	if size > limit {
		return db.Dataset{}, tooLarge
	}
	src = &capReader{r: src, n: limit, err: tooLarge}

	id := newID("ds_")
	blobKey := artifacts.DatasetKey(org, id)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	type putResult struct {
		n   int64
		sum string
		err error
	}
	done := make(chan putResult, 1)
	go func() {
		n, sum, err := s.Artifacts.Put(ctx, blobKey, pr)
		pr.CloseWithError(err)
		done <- putResult{n, sum, err}
	}()
	tee := io.TeeReader(src, pw)
	// The labels are checked as a job's validation would, so that a job
	// on this file need not read it again (db.DatasetStats). Preference
	// pairs have none: the builtin trainer does not train them.
	var labels trainer.LabelCheck
	sum, scanErr := dataset.Scan(ctx, tee, dataset.Options{MinExamples: 1}, func(e dataset.Example) error {
		if e.Preferred == "" {
			labels.Add(e.Target())
		}
		return nil
	})
	if scanErr == nil {
		_, scanErr = io.Copy(io.Discard, tee)
	}
	if scanErr != nil {
		cancel()
		pw.CloseWithError(scanErr)
		put := <-done
		s.discardBlob(ctx, blobKey)
		var verr *dataset.ValidationError
		var apiErr *apiError
		if put.err != nil && !errors.As(scanErr, &verr) && !errors.As(scanErr, &apiErr) && !errors.Is(put.err, scanErr) && !errors.Is(put.err, context.Canceled) {
			// The store failed, not the client: a server error, logged, not shown.
			return db.Dataset{}, fmt.Errorf("store dataset: %w", put.err)
		}
		return db.Dataset{}, uploadError(scanErr)
	}
	pw.Close()
	put := <-done
	if put.err != nil {
		s.discardBlob(ctx, blobKey)
		return db.Dataset{}, fmt.Errorf("store dataset: %w", put.err)
	}
	stats := &db.DatasetStats{Examples: sum.Examples, Tokens: sum.Tokens, MaxTokens: sum.MaxTokens, Format: string(sum.Format)}
	if err := labels.Err(); err != nil && !sum.Format.Preference() {
		stats.LabelProblem = err.Error()
	}
	var d db.Dataset
	err := s.Store.Transact(ctx, func(tx db.Conn) error {
		if quota {
			if err := tx.LockDatasetQuota(ctx, org); err != nil {
				return err
			}
			usage, err := tx.DatasetUsage(ctx, org)
			if err != nil {
				return err
			}
			if err := s.checkQuota(usage, put.n); err != nil {
				return err
			}
		}
		var err error
		d, err = tx.CreateDataset(ctx, db.Dataset{
			ID: id, OrganizationID: org, Filename: filename, Bytes: put.n, SHA256: put.sum,
			BlobKey: blobKey, CreatedBy: key.UserID, Stats: stats,
		})
		return err
	})
	if err != nil {
		s.discardBlob(ctx, blobKey)
		return db.Dataset{}, err
	}
	return d, nil
}

// discardBlob deletes the object of a dataset that was not recorded, even
// when the request is over.
func (s *Server) discardBlob(ctx context.Context, key string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := s.Artifacts.Delete(ctx, key); err != nil {
		s.log.ErrorContext(ctx, "delete the object of a refused dataset", "key", key, "err", err)
	}
}

// checkQuota refuses one more dataset of size bytes when it would take the
// organization past its quota.
func (s *Server) checkQuota(usage db.DatasetUsage, size int64) error {
	q := s.Datasets
	switch {
	case q.QuotaCount > 0 && usage.Datasets+1 > q.QuotaCount:
		return s.quotaError(usage, "it holds as many datasets as it may")
	case q.QuotaBytes > 0 && usage.Bytes+size > q.QuotaBytes:
		return s.quotaError(usage, fmt.Sprintf("this dataset of %s would exceed it", formatBytes(size)))
	}
	return nil
}

// quotaError is a 409: the request conflicts with the organization's
// current storage, which the client can change (delete datasets) before
// retrying. Not a 413, which would blame this request's size alone, nor a
// 429, since waiting does not help.
func (s *Server) quotaError(usage db.DatasetUsage, why string) *apiError {
	var quota []string
	if n := s.Datasets.QuotaCount; n > 0 {
		quota = append(quota, fmt.Sprintf("%d datasets", n))
	}
	if n := s.Datasets.QuotaBytes; n > 0 {
		quota = append(quota, fmt.Sprintf("%s (%d bytes)", formatBytes(n), n))
	}
	return newError(http.StatusConflict, "quota_exceeded",
		"dataset quota exceeded: your organization stores %d datasets of %s (%d bytes) and its quota is %s; %s. "+
			"Delete datasets you no longer need (DELETE /api/v1/fine-tuning/datasets/{id}) and try again",
		usage.Datasets, formatBytes(usage.Bytes), usage.Bytes, strings.Join(quota, " and "), why)
}

// formatBytes writes n in binary units for people, e.g. "1.5 GiB".
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func errDatasetTooLarge(limit int64) *apiError {
	return newError(http.StatusRequestEntityTooLarge, "payload_too_large", "the dataset exceeds %d bytes (%s), the most one dataset may hold", limit, formatBytes(limit))
}

// capReader reads r and fails with err once more than n bytes have come:
// a limit enforced while the data streams, not after.
type capReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n < 0 {
		return 0, c.err
	}
	if int64(len(p)) > c.n+1 {
		p = p[:c.n+1]
	}
	k, err := c.r.Read(p)
	if c.n -= int64(k); c.n < 0 {
		return k, c.err
	}
	return k, err
}

func uploadError(err error) error {
	var verr *dataset.ValidationError
	var maxErr *http.MaxBytesError
	var apiErr *apiError
	switch {
	case errors.As(err, &apiErr):
		return apiErr
	case errors.As(err, &verr):
		details := make([]fieldDetail, len(verr.Lines))
		for i, l := range verr.Lines {
			details[i] = fieldDetail{Line: l.Line, Message: l.Message}
		}
		return &apiError{Status: http.StatusUnprocessableEntity, Code: "invalid_dataset", Message: verr.Error(), Details: details}
	case errors.As(err, &maxErr):
		return newError(http.StatusRequestEntityTooLarge, "payload_too_large", "the request body exceeds %d bytes", maxErr.Limit)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errStalled
	}
	return badRequest("the upload could not be read: %v", err)
}

// resolveDataset turns a trainingDataset or validationFile value into a
// dataset of the caller's organization: a ds_ ID, or a path inside the
// import directory, which is imported. Paths elsewhere (the data
// directory's work/, adapters/ and models/ hold other organizations' files)
// are refused, symlinks leading out included.
func (s *Server) resolveDataset(ctx context.Context, key apikey.Key, ref, field string) (db.Dataset, error) {
	ref = strings.TrimSpace(ref)
	if isDatasetID(ref) {
		d, err := s.Store.Dataset(ctx, key.OrganizationID, ref)
		if db.IsNotFound(err) {
			return d, fieldError(http.StatusUnprocessableEntity, field, "unknown dataset %q; upload one with POST /api/v1/fine-tuning/datasets", ref)
		}
		return d, err
	}
	dir := s.importDir()
	outside := fieldError(http.StatusUnprocessableEntity, field,
		"%q is outside the import directory %s: give a path inside it, or upload the file with POST /api/v1/fine-tuning/datasets", ref, dir)
	rel := ref
	if filepath.IsAbs(ref) {
		r, err := filepath.Rel(dir, ref)
		if err != nil {
			return db.Dataset{}, outside
		}
		rel = r
	}
	if !filepath.IsLocal(rel) {
		return db.Dataset{}, outside
	}
	notFound := fieldError(http.StatusUnprocessableEntity, field, "no dataset ID or file %q in the import directory %s", ref, dir)
	// os.Root refuses "..", absolute paths and symlinks leading outside.
	root, err := os.OpenRoot(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return db.Dataset{}, notFound
	}
	if err != nil {
		return db.Dataset{}, fmt.Errorf("open the import directory: %w", err)
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return db.Dataset{}, notFound
		}
		return db.Dataset{}, fieldError(http.StatusUnprocessableEntity, field, "cannot read %q in the import directory %s: %v", ref, dir, errors.Unwrap(err))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return db.Dataset{}, notFound
	}
	// Capped and validated like an upload: a file growing while it is
	// read is cut off at the limit all the same.
	d, err := s.storeDataset(ctx, key, filepath.Base(rel), f, st.Size())
	var apiErr *apiError
	if errors.As(err, &apiErr) {
		apiErr.Message = field + ": " + apiErr.Message
	}
	return d, err
}

// importDir is where trainingDataset and validationFile paths are read.
func (s *Server) importDir() string {
	if s.ImportDir != "" {
		return s.ImportDir
	}
	return filepath.Join(s.DataDir, "import")
}

// isDatasetID tells a dataset ID from a path to import.
func isDatasetID(ref string) bool { return strings.HasPrefix(strings.TrimSpace(ref), "ds_") }

func fieldError(status int, field, format string, args ...any) error {
	var errs fieldErrors
	errs.add(field, format, args...)
	return errs.err(status)
}

func (s *Server) listDatasets(c *gin.Context) {
	ctx := c.Request.Context()
	var errs fieldErrors
	limit, offset := pagination(c, &errs)
	if err := errs.err(http.StatusBadRequest); err != nil {
		s.respondError(c, err)
		return
	}
	rows, count, err := s.Store.Datasets(ctx, caller(c).OrganizationID, limit, offset)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]datasetView, len(rows))
	for i, d := range rows {
		out[i] = viewDataset(d)
	}
	c.JSON(http.StatusOK, datasetPage{pageInfo{count, limit, offset}, out})
}

func (s *Server) getDataset(c *gin.Context) {
	id := c.Param("id")
	d, err := s.Store.Dataset(c.Request.Context(), caller(c).OrganizationID, id)
	if db.IsNotFound(err) {
		s.respondError(c, notFound("dataset", id))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusOK, viewDataset(d))
}

// deleteDataset removes a dataset: its row, then its object. A dataset a
// job may still read is kept (409): queued and running jobs read it now,
// and stopped and failed ones read it again when restarted. Completed and
// deployed jobs never train again; they keep naming the dataset as a record.
func (s *Server) deleteDataset(c *gin.Context) {
	if err := s.removeDataset(c.Request.Context(), caller(c).OrganizationID, c.Param("id")); err != nil {
		s.respondError(c, err)
		return
	}
	c.Status(http.StatusNoContent)
}

// dropImports deletes datasets a failed job request imported by path.
func (s *Server) dropImports(ctx context.Context, org string, ids []string) {
	for _, id := range ids {
		if err := s.removeDataset(ctx, org, id); err != nil {
			s.log.WarnContext(ctx, "delete a dataset imported for a job that was not created", "dataset", id, "err", err)
		}
	}
}

// removeDataset deletes a dataset no job may read any more, its row and
// its object together.
func (s *Server) removeDataset(ctx context.Context, org, id string) error {
	// Not cut short by a client that hangs up: the row and its object go
	// together.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return s.Store.Transact(ctx, func(tx db.Conn) error {
		d, err := tx.LockDataset(ctx, org, id)
		if db.IsNotFound(err) {
			return notFound("dataset", id)
		}
		if err != nil {
			return err
		}
		users, total, err := tx.JobsReading(ctx, org, id, 5)
		if err != nil {
			return err
		}
		if total > 0 {
			return datasetInUse(id, users, total)
		}
		if err := tx.DeleteDataset(ctx, org, id); err != nil {
			return err
		}
		// The object goes before the row's delete commits: if the store
		// fails, the dataset stays whole and the delete can be retried.
		if err := s.Artifacts.Delete(ctx, d.BlobKey); err != nil {
			s.log.ErrorContext(ctx, "delete the object of a dataset", "dataset", id, "err", err)
			return newError(http.StatusServiceUnavailable, "unavailable", "the artifact store did not delete the dataset's file; nothing was deleted, try again")
		}
		return nil
	})
}

// jobList names some of total jobs, with their statuses, for a message:
// "ftjob_a (queued), ftjob_b (stopped) and 3 more".
func jobList(users []db.JobRef, total int64) string {
	names := make([]string, len(users))
	for i, u := range users {
		names[i] = u.ID + " (" + string(u.Status) + ")"
	}
	list := strings.Join(names, ", ")
	if more := total - int64(len(users)); more > 0 {
		list += fmt.Sprintf(" and %d more", more)
	}
	return list
}

func datasetInUse(id string, users []db.JobRef, total int64) error {
	return conflict("dataset %s is used by %d job(s) that may still read it: %s. Queued and running jobs read it while they train, "+
		"and stopped or failed jobs read it again when restarted; delete those jobs (DELETE /api/v1/fine-tuning/jobs/{id}) "+
		"or let them complete, then delete the dataset", id, total, jobList(users, total))
}
