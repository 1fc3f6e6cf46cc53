package server

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
