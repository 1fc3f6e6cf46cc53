package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// Dataset is the API's dataset object.
type Dataset struct {
	ID        string    `json:"id"`
	Filename  string    `json:"filename"`
	Bytes     int64     `json:"bytes"`
	SHA256    string    `json:"sha256"`
	CreatedAt time.Time `json:"createdAt"`
}

func datasetsCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "datasets",
		Short: "Upload, list, show and delete datasets (JSONL training and validation files)",
	}
	var filename string
	upload := &cobra.Command{
		Use:   "upload FILE",
		Short: "Upload a JSONL file; it is validated as it streams, and a bad line is named",
		Example: `  tuneforge datasets upload train.jsonl
  tuneforge datasets upload --json data/valid.jsonl | jq -r .id`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, raw, err := a.upload(cmd.Context(), cmd.ErrOrStderr(), args[0], filename)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			return showDataset(cmd.OutOrStdout(), d)
		},
	}
	upload.Flags().StringVar(&filename, "filename", "", "the name to store it under (default: the file's own)")

	var limit, offset int
	list := &cobra.Command{
		Use:   "list",
		Short: "List the organization's datasets, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{"limit": {strconv.Itoa(limit)}, "offset": {strconv.Itoa(offset)}}
			var page struct {
				Count    int64     `json:"count"`
				Datasets []Dataset `json:"datasets"`
			}
			raw, err := a.client.get(cmd.Context(), fineTuning+"/datasets?"+q.Encode(), &page)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(page.Datasets))
			for i, d := range page.Datasets {
				rows[i] = []string{d.ID, d.Filename, humanBytes(d.Bytes), when(&d.CreatedAt)}
			}
			if err := table(cmd.OutOrStdout(), []string{"ID", "FILENAME", "SIZE", "CREATED"}, rows); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d of %d datasets\n", len(page.Datasets), page.Count)
			return nil
		},
	}
	list.Flags().IntVar(&limit, "limit", 20, "how many to list (1 to 100)")
	list.Flags().IntVar(&offset, "offset", 0, "how many to skip")

	get := &cobra.Command{
		Use:   "get ID",
		Short: "Show a dataset",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var d Dataset
			raw, err := a.client.get(cmd.Context(), fineTuning+"/datasets/"+url.PathEscape(args[0]), &d)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			return showDataset(cmd.OutOrStdout(), d)
		},
	}
	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a dataset (refused while a job may still train on it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := a.client.call(cmd.Context(), http.MethodDelete, fineTuning+"/datasets/"+url.PathEscape(args[0]), nil); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(cmd.OutOrStdout(), "dataset %s deleted\n", args[0])
			}
			return nil
		},
	}
	cmd.AddCommand(upload, list, get, del)
	return cmd
}

func showDataset(w io.Writer, d Dataset) error {
	return fields(w, [][2]string{
		{"ID", d.ID}, {"Filename", d.Filename}, {"Size", humanBytes(d.Bytes)}, {"SHA-256", d.SHA256}, {"Created", when(&d.CreatedAt)},
	})
}

// upload sends a local file as a dataset, drawing its progress on status
// when that is a terminal.
func (a *app) upload(ctx context.Context, status io.Writer, path, filename string) (Dataset, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return Dataset{}, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Dataset{}, nil, err
	}
	if filename == "" {
		filename = filepath.Base(path)
	}
	p := newProgress(status)
	body := &countingReader{r: f, total: st.Size(), onRead: func(n, total int64) {
		p.show(fmt.Sprintf("uploading %s %s %3.0f%% %s of %s", filename, bar(float64(n)/float64(max(total, 1)), 30),
			100*float64(n)/float64(max(total, 1)), humanBytes(n), humanBytes(total)), n == total)
	}}
	resp, err := a.client.send(ctx, http.MethodPost, fineTuning+"/datasets?filename="+url.QueryEscape(filename), body,
		http.Header{"Content-Type": {"application/x-ndjson"}})
	p.clear()
	if err != nil {
		return Dataset{}, nil, fmt.Errorf("upload %s: %w", path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return Dataset{}, nil, err
	}
	var d Dataset
	if err := json.Unmarshal(raw, &d); err != nil {
		return Dataset{}, nil, fmt.Errorf("read the answer to the upload: %w", err)
	}
	return d, raw, nil
}

// fileSHA256 hashes a local file as the server does its datasets.
func fileSHA256(path string) (sum string, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return "", 0, fmt.Errorf("%s is not a regular file", path)
	}
	h := sha256.New()
	if size, err = io.Copy(h, f); err != nil {
		return "", 0, fmt.Errorf("read %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), size, nil
}

// datasetWithContent finds the organization's newest dataset of size
// bytes whose SHA-256 is sum; its ID is "" when there is none.
func (a *app) datasetWithContent(ctx context.Context, sum string, size int64) (Dataset, error) {
	const limit = 100
	for offset := 0; ; offset += limit {
		var page struct {
			Count    int64     `json:"count"`
			Datasets []Dataset `json:"datasets"`
		}
		q := url.Values{"limit": {strconv.Itoa(limit)}, "offset": {strconv.Itoa(offset)}}
		if _, err := a.client.get(ctx, fineTuning+"/datasets?"+q.Encode(), &page); err != nil {
			return Dataset{}, fmt.Errorf("look for a dataset with the same content: %w", err)
		}
		for _, d := range page.Datasets {
			if d.Bytes == size && strings.EqualFold(d.SHA256, sum) {
				return d, nil
			}
		}
		if len(page.Datasets) < limit || int64(offset+limit) >= page.Count {
			return Dataset{}, nil
		}
	}
}

// countingReader reports how much of a body has been read.
type countingReader struct {
	r      io.Reader
	n      int64
	total  int64
	onRead func(n, total int64)
}

// Size lets the request say how long the body is.
func (c *countingReader) Size() int64 { return c.total }

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.onRead(c.n, c.total)
	return n, err
}
