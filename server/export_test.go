package server

import (
	"context"

	"go.temporal.io/sdk/client"
)

// NewRevisions is the revision chooser of an API replica whose control
// workers poll queue.
func NewRevisions(c client.Client, queue string) func(context.Context) int {
	return (&revisions{temporal: c, queue: queue}).current
}

// LogPolls counts the reads of new lines by the API's followed-log loops.
func (s *Server) LogPolls() int64 { return s.logs.polls.Load() }

// LogFeeds says how many followed-log loops run, and how many followers
// they have in all.
func (s *Server) LogFeeds() (feeds, followers int) {
	s.logs.mu.Lock()
	defer s.logs.mu.Unlock()
	for _, f := range s.logs.feeds {
		feeds++
		followers += len(f.subs)
	}
	return feeds, followers
}
