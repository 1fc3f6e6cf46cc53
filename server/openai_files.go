package server

import (
	"net/http"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/db"
)

// OpenAI's Files API over tuneforge's datasets: a file is a dataset, with
// the same validation, quota and deletion rules.

// filePurpose is the only purpose tuneforge stores files for.
const filePurpose = "fine-tune"

type openAIFile struct {
	Object    string  `json:"object"`
	ID        string  `json:"id"`
	Bytes     int64   `json:"bytes"`
	CreatedAt int64   `json:"created_at"`
	Filename  string  `json:"filename"`
	Purpose   string  `json:"purpose"`
	Status    string  `json:"status"`
	ExpiresAt *int64  `json:"expires_at"`
	Details   *string `json:"status_details"`
}

func toOpenAIFile(d db.Dataset) openAIFile {
	// A stored dataset has passed validation: it is "processed".
	return openAIFile{
		Object: "file", ID: d.ID, Bytes: d.Bytes, CreatedAt: d.CreatedAt.Unix(), Filename: d.Filename,
		Purpose: filePurpose, Status: "processed",
	}
}

func purposeError(got string) error {
	var errs fieldErrors
	if got == "" {
		errs.add("purpose", "is required: tuneforge stores files for %q only", filePurpose)
	} else {
		errs.add("purpose", "%q is not supported: tuneforge stores files for %q only", got, filePurpose)
	}
	return errs.err(http.StatusBadRequest)
}

// openAIUploadFile stores the multipart form's "file" as a dataset. The
// purpose may come before or after the file in the form; when it comes
// after and is wrong, the stored dataset is removed again.
func (s *Server) openAIUploadFile(c *gin.Context) {
	ctx := c.Request.Context()
	if c.ContentType() != "multipart/form-data" {
		s.respondError(c, badRequest(`send the file as multipart/form-data with a "file" part and purpose=%s`, filePurpose))
		return
	}
	up, err := s.readUpload(c)
	if err != nil {
		s.respondError(c, err)
		return
	}
	if p, ok := up.fields["purpose"]; ok && p != filePurpose {
		s.respondError(c, purposeError(p))
		return
	}
	key := caller(c)
	d, err := s.storeDataset(ctx, key, up.filename, up.src, up.size)
	s.extendWrite(c)
	if err != nil {
		s.respondError(c, err)
		return
	}
	if err := up.restOfForm(); err != nil || up.fields["purpose"] != filePurpose {
		if rerr := s.removeDataset(ctx, key.OrganizationID, d.ID); rerr != nil {
			s.log.ErrorContext(ctx, "remove a file uploaded with a bad form", "dataset", d.ID, "err", rerr)
		}
		if err == nil {
			err = purposeError(up.fields["purpose"])
		}
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusOK, toOpenAIFile(d))
}

func (s *Server) openAIListFiles(c *gin.Context) {
	if p := c.Query("purpose"); p != "" && p != filePurpose {
		// Files of other purposes do not exist here.
		c.JSON(http.StatusOK, newOpenAIList([]openAIFile(nil), 1, func(f openAIFile) string { return f.ID }))
		return
	}
	after, limit, err := cursorPage(c, 10_000, 10_000)
	if err != nil {
		s.respondError(c, err)
		return
	}
	var newestFirst bool
	switch c.DefaultQuery("order", "desc") {
	case "desc":
		newestFirst = true
	case "asc":
	default:
		var errs fieldErrors
		errs.add("order", `must be "asc" or "desc"`)
		s.respondError(c, errs.err(http.StatusBadRequest))
		return
	}
	rows, err := s.Store.DatasetsAfter(c.Request.Context(), db.DatasetPage{
		OrganizationID: caller(c).OrganizationID, After: after, Limit: limit + 1, NewestFirst: newestFirst,
	})
	if db.IsNotFound(err) {
		s.respondError(c, cursorError("file", *after))
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	out := make([]openAIFile, len(rows))
	for i, d := range rows {
		out[i] = toOpenAIFile(d)
	}
	c.JSON(http.StatusOK, newOpenAIList(out, limit, func(f openAIFile) string { return f.ID }))
}

// openAIDataset loads the caller's dataset named in the path.
func (s *Server) openAIDataset(c *gin.Context) (db.Dataset, bool) {
	id := c.Param("id")
	d, err := s.Store.Dataset(c.Request.Context(), caller(c).OrganizationID, id)
	if db.IsNotFound(err) {
		s.respondError(c, notFound("file", id))
		return d, false
	}
	if err != nil {
		s.respondError(c, err)
		return d, false
	}
	return d, true
}

func (s *Server) openAIGetFile(c *gin.Context) {
	if d, ok := s.openAIDataset(c); ok {
		c.JSON(http.StatusOK, toOpenAIFile(d))
	}
}

// openAIFileContent streams the file's bytes.
func (s *Server) openAIFileContent(c *gin.Context) {
	d, ok := s.openAIDataset(c)
	if !ok {
		return
	}
	s.streamArtifact(c, d.BlobKey, "application/jsonl", d.Filename, notFound("file", d.ID))
}

type openAIDeleted struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Deleted bool   `json:"deleted"`
}

func (s *Server) openAIDeleteFile(c *gin.Context) {
	id := c.Param("id")
	if err := s.removeDataset(c.Request.Context(), caller(c).OrganizationID, id); err != nil {
		if apiErr, ok := err.(*apiError); ok && apiErr.Status == http.StatusNotFound {
			err = notFound("file", id)
		}
		s.respondError(c, err)
		return
	}
	c.JSON(http.StatusOK, openAIDeleted{ID: id, Object: "file", Deleted: true})
}
