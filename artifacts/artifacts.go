// Package artifacts stores datasets, checkpoints and trained models in a blob
// bucket addressed by a URL (TUNEFORGE_ARTIFACTS): a local directory in
// development, S3, GCS, Azure Blob or MinIO in production, so that any
// training host can read what the API stored and resume any checkpoint.
package artifacts

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"gocloud.dev/blob"
	_ "gocloud.dev/blob/azureblob" // azblob:// URLs
	_ "gocloud.dev/blob/fileblob"  // file:// URLs
	_ "gocloud.dev/blob/gcsblob"   // gs:// URLs
	_ "gocloud.dev/blob/s3blob"    // s3:// URLs, MinIO included
	"gocloud.dev/gcerrors"
)

// ErrNotExist is returned for a key with no object.
var ErrNotExist = errors.New("artifact does not exist")

// Store is an open bucket.
type Store struct {
	bucket *blob.Bucket
}

// Open opens the bucket at rawURL; a file:// directory is created if missing.
func Open(ctx context.Context, rawURL string) (*Store, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("TUNEFORGE_ARTIFACTS %q is not a URL: %w", rawURL, err)
	}
	if u.Scheme == "file" {
		if err := os.MkdirAll(u.Path, 0o755); err != nil {
			return nil, fmt.Errorf("create artifact directory: %w", err)
		}
		q := u.Query()
		if q.Get("metadata") == "" {
			// Sidecar attribute files are noise in a local directory.
			q.Set("metadata", "skip")
		}
		u.RawQuery = q.Encode()
	}
	b, err := blob.OpenBucket(ctx, u.String())
	if err != nil {
		return nil, fmt.Errorf("open artifact store %s://%s: %w", u.Scheme, u.Host+u.Path, err)
	}
	return &Store{bucket: b}, nil
}

// Close closes the bucket.
func (s *Store) Close() error { return s.bucket.Close() }

// Put streams r to key and returns its size and SHA-256. The object appears
// only if the whole stream was written.
func (s *Store) Put(ctx context.Context, key string, r io.Reader) (int64, string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := s.bucket.NewWriter(ctx, key, nil)
	if err != nil {
		return 0, "", fmt.Errorf("write %s: %w", key, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), r)
	if err != nil {
		cancel() // abandons the partial object
		_ = w.Close()
		return n, "", fmt.Errorf("write %s: %w", key, err)
	}
	if err := w.Close(); err != nil {
		return n, "", fmt.Errorf("write %s: %w", key, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// PutBytes writes b to key.
func (s *Store) PutBytes(ctx context.Context, key string, b []byte) error {
	_, _, err := s.Put(ctx, key, bytes.NewReader(b))
	return err
}

// Open returns a reader of key's object.
func (s *Store) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	r, err := s.bucket.NewReader(ctx, key, nil)
	if err != nil {
		return nil, wrap(key, err)
	}
	return r, nil
}

// Get reads key's object whole.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	b, err := s.bucket.ReadAll(ctx, key)
	if err != nil {
		return nil, wrap(key, err)
	}
	return b, nil
}

// Copy copies src to dst within the bucket.
func (s *Store) Copy(ctx context.Context, dst, src string) error {
	if err := s.bucket.Copy(ctx, dst, src, nil); err != nil {
		return wrap(src, err)
	}
	return nil
}

// Delete removes key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	err := s.bucket.Delete(ctx, key)
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// List returns the keys under prefix, sorted.
func (s *Store) List(ctx context.Context, prefix string) ([]string, error) {
	objs, err := s.ListObjects(ctx, prefix)
	keys := make([]string, len(objs))
	for i, o := range objs {
		keys[i] = o.Key
	}
	return keys, err
}

// DeletePrefix removes every object under prefix.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) error {
	keys, err := s.List(ctx, prefix)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

func wrap(key string, err error) error {
	if gcerrors.Code(err) == gcerrors.NotFound {
		return fmt.Errorf("%s: %w", key, ErrNotExist)
	}
	return fmt.Errorf("read %s: %w", key, err)
}

// DatasetPrefix holds every uploaded dataset.
const DatasetPrefix = "datasets/"

// DatasetKey is where an uploaded dataset lives.
func DatasetKey(orgID, datasetID string) string {
	return DatasetPrefix + orgID + "/" + datasetID + ".jsonl"
}

// CheckpointPrefix holds a job's checkpoints, one object per saved step.
func CheckpointPrefix(jobID string) string { return "checkpoints/" + jobID + "/" }

// CheckpointKey names a job's checkpoint taken at step. Keys sort by step,
// so the newest is the last, and a late write from an attempt that was
// already superseded can never replace a newer checkpoint.
func CheckpointKey(jobID string, step int) string {
	return fmt.Sprintf("%sstep-%012d.ckpt", CheckpointPrefix(jobID), step)
}

// ModelKey is where a job publishes its deployed model's weights. The job's
// ID is part of the key, so two jobs deploying one name never overwrite
// each other's files.
func ModelKey(orgID, jobID, model string) string {
	return ModelPrefix(orgID, jobID) + model + ".model"
}

// ModelPrefix holds everything a job published, under any model name.
func ModelPrefix(orgID, jobID string) string { return "models/" + orgID + "/" + jobID + "/" }

// ModelCardKey is where a job publishes its deployed model's card (Markdown).
func ModelCardKey(orgID, jobID, model string) string {
	return ModelPrefix(orgID, jobID) + model + ".card.md"
}

// DirCheckpointKey names a checkpoint directory that the command trainer
// wrote at step, stored as one tar archive. Like CheckpointKey, keys sort
// by step.
func DirCheckpointKey(jobID string, step int) string {
	return fmt.Sprintf("%sstep-%012d.tar", CheckpointPrefix(jobID), step)
}

// KeptPrefix holds the checkpoints a job keeps from the ends of its
// epochs, to list and to restart from. They live apart from the rolling
// checkpoints under CheckpointPrefix, which training prunes as it goes.
func KeptPrefix(jobID string) string { return "kept-checkpoints/" + jobID + "/" }

// KeptKey names the kept copy of the rolling checkpoint at key.
func KeptKey(jobID, key string) string {
	return KeptPrefix(jobID) + strings.TrimPrefix(key, CheckpointPrefix(jobID))
}

// RollingKey names the rolling checkpoint a kept one was copied from, so
// a restart can resume from it.
func RollingKey(jobID, keptKey string) string {
	return CheckpointPrefix(jobID) + strings.TrimPrefix(keptKey, KeptPrefix(jobID))
}

// OutputKey is where a job's trained output (the command trainer's adapter
// or model directory) is stored, as one tar archive.
func OutputKey(jobID string) string { return "outputs/" + jobID + "/output.tar" }

// Object is one stored object.
type Object struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// Stat returns key's size and modification time.
func (s *Store) Stat(ctx context.Context, key string) (Object, error) {
	a, err := s.bucket.Attributes(ctx, key)
	if err != nil {
		return Object{}, wrap(key, err)
	}
	return Object{Key: key, Size: a.Size, ModTime: a.ModTime}, nil
}

// ListObjects returns the objects under prefix, sorted by key.
func (s *Store) ListObjects(ctx context.Context, prefix string) ([]Object, error) {
	var out []Object
	err := s.EachObject(ctx, prefix, func(o Object) error {
		out = append(out, o)
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// EachObject calls fn with each object under prefix as the listing
// arrives, in no set order, without holding them all; an error of fn stops
// it and is returned.
func (s *Store) EachObject(ctx context.Context, prefix string, fn func(Object) error) error {
	it := s.bucket.List(&blob.ListOptions{Prefix: prefix})
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		if err := fn(Object{Key: obj.Key, Size: obj.Size, ModTime: obj.ModTime}); err != nil {
			return err
		}
	}
}

// ParseCheckpointKey reads the step of a checkpoint key and whether it holds
// a directory (DirCheckpointKey) rather than a builtin checkpoint
// (CheckpointKey). Only keys those functions would produce are accepted.
func ParseCheckpointKey(jobID, key string) (step int, dir bool, ok bool) {
	name, ok := strings.CutPrefix(key, CheckpointPrefix(jobID)+"step-")
	if !ok {
		return 0, false, false
	}
	digits, ext, ok := strings.Cut(name, ".")
	if !ok {
		return 0, false, false
	}
	step, err := strconv.Atoi(digits)
	if err != nil || step < 0 {
		return 0, false, false
	}
	switch {
	case ext == "ckpt" && key == CheckpointKey(jobID, step):
		return step, false, true
	case ext == "tar" && key == DirCheckpointKey(jobID, step):
		return step, true, true
	}
	return 0, false, false
}
