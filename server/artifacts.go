package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/tuneforge/tuneforge/artifacts"
)

// Kinds and formats of a job's downloadable artifacts.
const (
	artifactCheckpoint = "checkpoint"
	artifactOutput     = "output"

	// formatBuiltin is the builtin trainer's checkpoint encoding.
	formatBuiltin = "builtin"
	// formatTar is a directory (a command trainer's checkpoint or output)
	// archived as one tar file.
	formatTar = "tar"
)

// outputArtifactID names a job's trained output; it has only one.
const outputArtifactID = "output"

type jobArtifactView struct {
	ID          string    `json:"id"`
	Kind        string    `json:"kind"`
	Step        *int      `json:"step,omitempty"`
	Bytes       int64     `json:"bytes"`
	Format      string    `json:"format"`
	CreatedAt   time.Time `json:"createdAt"`
	DownloadURL string    `json:"downloadUrl"`
}

type jobArtifactsView struct {
	JobID     string            `json:"jobId"`
	Artifacts []jobArtifactView `json:"artifacts"`
}

// jobArtifact is one listed artifact and the key it is stored at. Keys
// come only from the store's listing, so a client-supplied artifact ID
// can select one of these and never name an arbitrary key.
type jobArtifact struct {
	view jobArtifactView
	key  string
}

// listJobArtifacts returns the job's checkpoints, oldest first, then its
// output if it has one.
func (s *Server) listJobArtifacts(ctx context.Context, jobID string) ([]jobArtifact, error) {
	objs, err := s.Artifacts.ListObjects(ctx, artifacts.CheckpointPrefix(jobID))
	if err != nil {
		return nil, fmt.Errorf("list checkpoints of %s: %w", jobID, err)
	}
	out := []jobArtifact{}
	seen := map[string]bool{}
	for _, o := range objs {
		step, format, ok := parseCheckpointKey(jobID, o.Key)
		if !ok {
			continue
		}
		id := fmt.Sprintf("checkpoint-step-%012d", step)
		// A job's checkpoints all come from one kind of trainer (a job
		// resumes only on the kind that began it), so a step has one
		// object; should both exist, the first by key is the one served.
		if seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, jobArtifact{key: o.Key, view: jobArtifactView{
			ID: id, Kind: artifactCheckpoint, Step: &step, Bytes: o.Size, Format: format,
			CreatedAt: o.ModTime.UTC(), DownloadURL: artifactURL(jobID, id),
		}})
	}
	o, err := s.Artifacts.Stat(ctx, artifacts.OutputKey(jobID))
	switch {
	case errors.Is(err, artifacts.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("stat the output of %s: %w", jobID, err)
	default:
		out = append(out, jobArtifact{key: o.Key, view: jobArtifactView{
			ID: outputArtifactID, Kind: artifactOutput, Bytes: o.Size, Format: formatTar,
			CreatedAt: o.ModTime.UTC(), DownloadURL: artifactURL(jobID, outputArtifactID),
		}})
	}
	return out, nil
}

// parseCheckpointKey reads the step and format of a checkpoint key; keys
// that are not checkpoints are not listed.
func parseCheckpointKey(jobID, key string) (int, string, bool) {
	step, dir, ok := artifacts.ParseCheckpointKey(jobID, key)
	if dir {
		return step, formatTar, ok
	}
	return step, formatBuiltin, ok
}

func artifactURL(jobID, artifactID string) string {
	return "/api/v1/fine-tuning/jobs/" + jobID + "/artifacts/" + artifactID
}

func (s *Server) jobArtifacts(c *gin.Context) {
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	list, err := s.listJobArtifacts(c.Request.Context(), job.ID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	views := make([]jobArtifactView, len(list))
	for i, a := range list {
		views[i] = a.view
	}
	c.JSON(http.StatusOK, jobArtifactsView{JobID: job.ID, Artifacts: views})
}

func (s *Server) downloadJobArtifact(c *gin.Context) {
	ctx := c.Request.Context()
	job, ok := s.loadJob(c)
	if !ok {
		return
	}
	id := c.Param("artifactId")
	list, err := s.listJobArtifacts(ctx, job.ID)
	if err != nil {
		s.respondError(c, err)
		return
	}
	var found *jobArtifact
	for i := range list {
		if list[i].view.ID == id {
			found = &list[i]
			break
		}
	}
	if found == nil {
		s.respondError(c, notFound("artifact", id+" of fine-tuning job "+job.ID))
		return
	}
	contentType, ext := "application/octet-stream", ".ckpt"
	if found.view.Format == formatTar {
		contentType, ext = "application/x-tar", ".tar"
	}
	// Not found: pruned by a newer checkpoint since it was listed.
	s.streamArtifact(c, found.key, contentType, job.ID+"-"+id+ext, notFound("artifact", id+" of fine-tuning job "+job.ID))
}

// streamArtifact sends the stored object key as an attachment named
// filename, or gone when it no longer exists.
func (s *Server) streamArtifact(c *gin.Context, key, contentType, filename string, gone error) {
	ctx := c.Request.Context()
	r, err := s.Artifacts.Open(ctx, key)
	if errors.Is(err, artifacts.ErrNotExist) {
		s.respondError(c, gone)
		return
	}
	if err != nil {
		s.respondError(c, err)
		return
	}
	defer r.Close()
	h := c.Writer.Header()
	h.Set("Content-Type", contentType)
	// The object may have been rewritten since it was listed (a retried
	// epoch saves the same step again); the reader's size is the truth.
	if sized, ok := r.(interface{ Size() int64 }); ok {
		h.Set("Content-Length", strconv.FormatInt(sized.Size(), 10))
	}
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filename}))
	c.Status(http.StatusOK)
	if _, err := io.Copy(s.streamWriter(c), r); err != nil {
		// The status is sent; the short body (against Content-Length) is
		// what tells the client the download failed.
		s.log.WarnContext(ctx, "stream artifact", "key", key, "err", err)
		c.Abort()
	}
}
