package cli

import (
	"regexp"
	"strings"
)

// routeRE finds the REST routes the server's messages point to, such as
// "POST /api/v1/fine-tuning/jobs/ftjob_x/stop".
var routeRE = regexp.MustCompile(`\b(GET|POST|DELETE) (/api/v1/fine-tuning/[A-Za-z0-9_{}/-]*|/v1/[a-z_/]+)`)

// cliCommands rewrites the REST routes in a message of the server as the
// commands that call them, quoted as the CLI quotes commands; a route no
// command calls stays as it is.
func cliCommands(msg string) string {
	return routeRE.ReplaceAllStringFunc(msg, func(route string) string {
		m := routeRE.FindStringSubmatch(route)
		if cmd := commandFor(m[1], strings.TrimRight(m[2], "/")); cmd != "" {
			return "`tuneforge " + cmd + "`"
		}
		return route
	})
}

// commandFor names the command that sends method to path, or "".
func commandFor(method, path string) string {
	switch method + " " + path {
	case "GET /v1/models":
		return "models list"
	case "POST /v1/chat/completions":
		return "chat MODEL MESSAGE"
	}
	rest, ok := strings.CutPrefix(path, fineTuning+"/")
	if !ok {
		return ""
	}
	p := strings.Split(rest, "/")
	for i, s := range p {
		if s == "{id}" {
			p[i] = "ID"
		}
	}
	switch {
	case len(p) == 1 && method == "GET" && (p[0] == "base-models" || p[0] == "hardware"):
		return p[0]
	case len(p) == 1 && p[0] == "jobs":
		return map[string]string{"GET": "jobs list", "POST": "jobs create"}[method]
	case len(p) == 1 && p[0] == "datasets":
		return map[string]string{"GET": "datasets list", "POST": "datasets upload FILE"}[method]
	case len(p) == 2 && (p[0] == "jobs" || p[0] == "datasets"):
		return map[string]string{"GET": p[0] + " get " + p[1], "DELETE": p[0] + " delete " + p[1]}[method]
	case len(p) == 3 && p[0] == "jobs":
		verbs := map[string]string{
			"stop": "POST", "restart": "POST", "deploy": "POST",
			"logs": "GET", "metrics": "GET", "events": "GET", "checkpoints": "GET",
		}
		if verbs[p[2]] == method {
			return "jobs " + p[2] + " " + p[1]
		}
	}
	return ""
}
