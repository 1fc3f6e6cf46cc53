package inference

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// maxEventLine bounds one line of a streamed answer; a chunk carries a few
// tokens, so this is far beyond any real one.
const maxEventLine = 1 << 20

// RewriteModel returns the JSON object body with its "model" field set to
// model, so clients see the name they asked for rather than the adapter's.
// A body without a "model" field is returned as it is.
func RewriteModel(body []byte, model string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		return nil, fmt.Errorf("decode answer: %w", err)
	}
	if _, ok := obj["model"]; !ok {
		return body, nil
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false) // keep the model's text as the backend wrote it
	if err := enc.Encode(model); err != nil {
		return nil, err
	}
	obj["model"] = bytes.TrimSpace(b.Bytes())
	b = bytes.Buffer{}
	if err := enc.Encode(obj); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// CopyStream copies a streamed answer (server-sent events) from src to dst
// as it arrives, calling flush after each event. Each JSON data chunk is
// written as "data: <chunk>" with its "model" field rewritten to model;
// other lines, such as "data: [DONE]" and comments, pass through unchanged.
func CopyStream(dst io.Writer, flush func(), src io.Reader, model string) error {
	sc := bufio.NewScanner(src)
	sc.Buffer(make([]byte, 0, 64<<10), maxEventLine)
	w := bufio.NewWriter(dst)
	for sc.Scan() {
		line := sc.Bytes()
		if data, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = bytes.TrimPrefix(data, []byte(" "))
			if bytes.HasPrefix(data, []byte("{")) {
				if out, err := RewriteModel(data, model); err == nil {
					line = append([]byte("data: "), out...)
				}
			}
		}
		w.Write(line)
		w.WriteByte('\n')
		if len(line) == 0 {
			if err := w.Flush(); err != nil {
				return err
			}
			flush()
		}
	}
	if err := w.Flush(); err != nil {
		return err
	}
	flush()
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read the streamed answer: %w", err)
	}
	return nil
}
