package server

import (
	"io"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"
)

// Timeouts bound how long a client may hold a connection, so that slow or
// stalled clients (slowloris) cannot pile up connections; zero fields take
// the defaults. Uploads and streamed answers (artifact downloads, chat
// completion events) outlast Read and Write: they push their deadline out
// while data moves, and only a stall of Stall cuts them off.
type Timeouts struct {
	// ReadHeader bounds reading the request line and headers (10s).
	ReadHeader time.Duration
	// Read bounds reading the whole request, body included (1m).
	Read time.Duration
	// Write bounds handling the request and writing the answer, from the
	// end of its headers (5m: above the 30s a job transition may wait for
	// its workflow, and an import of a dataset file by path).
	Write time.Duration
	// Idle bounds a kept-alive connection's wait for its next request (2m).
	Idle time.Duration
	// Stall bounds a wait for the next bytes of an upload, or for a
	// client to take the next bytes of a stream (1m).
	Stall time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	for _, f := range []struct {
		d   *time.Duration
		def time.Duration
	}{
		{&t.ReadHeader, 10 * time.Second}, {&t.Read, time.Minute}, {&t.Write, 5 * time.Minute},
		{&t.Idle, 2 * time.Minute}, {&t.Stall, time.Minute},
	} {
		if *f.d <= 0 {
			*f.d = f.def
		}
	}
	return t
}

// progressReader reads a request body, moving the connection's read
// deadline to stall ahead before each read.
type progressReader struct {
	r     io.Reader
	rc    *http.ResponseController
	stall time.Duration
}

func (p *progressReader) Read(b []byte) (int, error) {
	// An error means the writer has no deadlines (a test recorder); then
	// there is nothing to move.
	_ = p.rc.SetReadDeadline(time.Now().Add(p.stall))
	return p.r.Read(b)
}

// progressWriter writes a streamed answer, moving the connection's write
// deadline to stall ahead before each write.
type progressWriter struct {
	w     io.Writer
	rc    *http.ResponseController
	stall time.Duration
}

func (p *progressWriter) Write(b []byte) (int, error) {
	_ = p.rc.SetWriteDeadline(time.Now().Add(p.stall))
	return p.w.Write(b)
}

// uploadBody is the request's body, which may take as long as it keeps
// arriving.
func (s *Server) uploadBody(c *gin.Context) io.Reader {
	return &progressReader{r: c.Request.Body, rc: http.NewResponseController(c.Writer), stall: s.Timeouts.Stall}
}

// streamWriter is the response writer for an answer that may take as long
// as the client keeps reading it.
func (s *Server) streamWriter(c *gin.Context) io.Writer {
	return &progressWriter{w: c.Writer, rc: http.NewResponseController(c.Writer), stall: s.Timeouts.Stall}
}

// extendWrite gives a handler that ran long (an upload, a slow inference
// backend) Stall to write its answer, past the server's WriteTimeout.
func (s *Server) extendWrite(c *gin.Context) {
	_ = http.NewResponseController(c.Writer).SetWriteDeadline(time.Now().Add(s.Timeouts.Stall))
}
