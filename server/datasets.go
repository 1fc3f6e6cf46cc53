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
	"github.com/tuneforge/tuneforge/db/dbsqlc"
)

type datasetView struct {
	ID        string    `json:"id"`
	Filename  string    `json:"filename"`
	Bytes     int64     `json:"bytes"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"createdAt"`
}

func viewDataset(d dbsqlc.Dataset) datasetView {
	return datasetView{ID: d.ID, Filename: d.Filename, Bytes: d.Bytes, SHA256: d.Sha256, CreatedAt: d.CreatedAt.UTC()}
}

// uploadDataset stores a JSONL file sent as the raw body (name in
// ?filename=) or as the "file" part of a multipart form. The body is
// streamed to the artifact store and checked line by line on the way, so a
// bad file is refused with line numbers and nothing is kept.
func (s *Server) uploadDataset(c *gin.Context) {
	body := http.MaxBytesReader(c.Writer, io.NopCloser(s.uploadBody(c)), maxUploadBody)
	filename := c.Query("filename")
	var src io.Reader = body
	mediaType, params, _ := mime.ParseMediaType(c.GetHeader("Content-Type"))
	if mediaType == "multipart/form-data" {
		part, err := fileFromMultipart(body, params["boundary"])
		if err != nil {
			s.respondError(c, err)
			return
		}
		if filename == "" {
			filename = part.FileName()
		}
		src = part
	}
	filename = path.Base(strings.ReplaceAll(strings.TrimSpace(filename), `\`, "/"))
	if filename == "" || filename == "." || filename == "/" {
		filename = "dataset.jsonl"
	}
	if len(filename) > 255 {
		s.respondError(c, badRequest("filename must be at most 255 characters"))
		return
	}
	d, err := s.storeDataset(c.Request.Context(), caller(c), filename, src)
	// The upload may have outlasted the server's write timeout.
	s.extendWrite(c)
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusCreated, viewDataset(d))
}

func fileFromMultipart(body io.Reader, boundary string) (*multipart.Part, error) {
	if boundary == "" {
		return nil, badRequest("multipart body without a boundary")
	}
	mr := multipart.NewReader(body, boundary)
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return nil, badRequest(`the multipart form has no "file" part`)
		}
		if err != nil {
			return nil, badRequest("malformed multipart body: %v", err)
		}
		if p.FormName() == "file" {
			return p, nil
		}
	}
}

// storeDataset streams src into the artifact store while validating it.
func (s *Server) storeDataset(ctx context.Context, key apikey.Key, filename string, src io.Reader) (dbsqlc.Dataset, error) {
	id := newID("ds_")
	blobKey := artifacts.DatasetKey(key.OrganizationID, id)
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
	_, scanErr := dataset.Scan(ctx, tee, dataset.Options{MinExamples: 1}, nil)
	if scanErr == nil {
		_, scanErr = io.Copy(io.Discard, tee)
	}
	if scanErr != nil {
		cancel()
		pw.CloseWithError(scanErr)
		put := <-done
		_ = s.Artifacts.Delete(context.WithoutCancel(ctx), blobKey)
		var verr *dataset.ValidationError
		if put.err != nil && !errors.As(scanErr, &verr) && !errors.Is(put.err, scanErr) && !errors.Is(put.err, context.Canceled) {
			// The store failed, not the client: a server error, logged, not shown.
			return dbsqlc.Dataset{}, fmt.Errorf("store dataset: %w", put.err)
		}
		return dbsqlc.Dataset{}, uploadError(scanErr)
	}
	pw.Close()
	put := <-done
	if put.err != nil {
		return dbsqlc.Dataset{}, fmt.Errorf("store dataset: %w", put.err)
	}
	d, err := s.Store.Q.CreateDataset(ctx, s.Store.Pool, dbsqlc.CreateDatasetParams{
		ID: id, OrganizationID: key.OrganizationID, Filename: filename, Bytes: put.n, Sha256: put.sum,
		BlobKey: blobKey, CreatedBy: key.UserID,
	})
	if err != nil {
		_ = s.Artifacts.Delete(context.WithoutCancel(ctx), blobKey)
		return dbsqlc.Dataset{}, fmt.Errorf("record dataset: %w", err)
	}
	return d, nil
}

func uploadError(err error) error {
	var verr *dataset.ValidationError
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &verr):
		details := make([]fieldDetail, len(verr.Lines))
		for i, l := range verr.Lines {
			details[i] = fieldDetail{Line: l.Line, Message: l.Message}
		}
		return &apiError{Status: http.StatusUnprocessableEntity, Code: "invalid_dataset", Message: verr.Error(), Details: details}
	case errors.As(err, &maxErr):
		return newError(http.StatusRequestEntityTooLarge, "payload_too_large", "the dataset exceeds %d bytes", maxErr.Limit)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errStalled
	}
	return badRequest("the upload could not be read: %v", err)
}

// resolveDataset turns a trainingDataset or validationFile value into a
// dataset of the caller's organization: a ds_ ID, or a path inside the
// data directory, which is imported (a path that escapes it is refused).
func (s *Server) resolveDataset(ctx context.Context, key apikey.Key, ref, field string) (dbsqlc.Dataset, error) {
	ref = strings.TrimSpace(ref)
	if strings.HasPrefix(ref, "ds_") {
		d, err := s.Store.Q.GetDataset(ctx, s.Store.Pool, dbsqlc.GetDatasetParams{OrganizationID: key.OrganizationID, ID: ref})
		if db.IsNotFound(err) {
			return d, fieldError(http.StatusUnprocessableEntity, field, "unknown dataset %q; upload one with POST /api/v1/fine-tuning/datasets", ref)
		}
		return d, err
	}
	rel := ref
	if filepath.IsAbs(ref) {
		r, err := filepath.Rel(s.DataDir, ref)
		if err != nil {
			return dbsqlc.Dataset{}, fieldError(http.StatusUnprocessableEntity, field, "%q is outside the data directory", ref)
		}
		rel = r
	}
	if !filepath.IsLocal(rel) {
		return dbsqlc.Dataset{}, fieldError(http.StatusUnprocessableEntity, field, "%q is outside the data directory", ref)
	}
	notFound := fieldError(http.StatusUnprocessableEntity, field, "no dataset ID or file %q in the data directory", ref)
	if reservedPath(rel) {
		// The platform's own state (other organizations' artifacts, the
		// Temporal database, the dev key) is never importable, and looks
		// the same as a missing file.
		return dbsqlc.Dataset{}, notFound
	}
	// os.Root refuses "..", absolute paths and symlinks leading outside.
	root, err := os.OpenRoot(s.DataDir)
	if err != nil {
		return dbsqlc.Dataset{}, err
	}
	defer root.Close()
	f, err := root.Open(rel)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return dbsqlc.Dataset{}, notFound
		}
		return dbsqlc.Dataset{}, fieldError(http.StatusUnprocessableEntity, field, "cannot read %q inside the data directory: %v", ref, errors.Unwrap(err))
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || st.IsDir() {
		return dbsqlc.Dataset{}, notFound
	}
	d, err := s.storeDataset(ctx, key, filepath.Base(rel), f)
	var apiErr *apiError
	if errors.As(err, &apiErr) {
		apiErr.Message = field + ": " + apiErr.Message
	}
	return d, err
}

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
	org := caller(c).OrganizationID
	rows, err := s.Store.Q.ListDatasets(ctx, s.Store.Pool, dbsqlc.ListDatasetsParams{OrganizationID: org, Limit: int32(limit), Offset: int32(offset)})
	if err != nil {
		s.respondError(c, err)
		return
	}
	count, err := s.Store.Q.CountDatasets(ctx, s.Store.Pool, org)
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]datasetView, len(rows))
	for i, d := range rows {
		out[i] = viewDataset(d)
	}
	c.JSON(http.StatusOK, gin.H{"count": count, "limit": limit, "offset": offset, "datasets": out})
}

func (s *Server) getDataset(c *gin.Context) {
	id := c.Param("id")
	d, err := s.Store.Q.GetDataset(c.Request.Context(), s.Store.Pool, dbsqlc.GetDatasetParams{OrganizationID: caller(c).OrganizationID, ID: id})
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

// reservedPath reports paths of the data directory that hold tuneforge's
// own state rather than users' files.
func reservedPath(rel string) bool {
	first, _, _ := strings.Cut(filepath.ToSlash(filepath.Clean(rel)), "/")
	return first == "artifacts" || strings.HasPrefix(first, "temporal.db") || first == "dev-api-key"
}
