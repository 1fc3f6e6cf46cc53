package server

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/gin-gonic/gin"
	"gopkg.in/yaml.v3"
)

// The API as a document: server/openapi.yaml, served as JSON at
// /openapi.json and rendered for people at /docs. The integration tests
// validate every request and response they make against it.

//go:embed openapi.yaml
var openAPIYAML []byte

// OpenAPIJSON is the OpenAPI 3.1 document of the API, as /openapi.json
// serves it.
func OpenAPIJSON() ([]byte, error) { return openAPI() }

var openAPI = sync.OnceValues(func() ([]byte, error) {
	var doc map[string]any
	if err := yaml.Unmarshal(openAPIYAML, &doc); err != nil {
		return nil, fmt.Errorf("server/openapi.yaml: %w", err)
	}
	return json.Marshal(doc)
})

func (s *Server) openAPIDocument(c *gin.Context) {
	b, err := openAPI()
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.Data(http.StatusOK, "application/json", b)
}

// docOperation is one operation as the reference page shows it.
type docOperation struct {
	Method, Path, Summary, Description, Tag string
	Params                                  []docParam
	Body                                    string
	Responses                               []docResponse
}

type docParam struct{ Name, In, Type, Description string }

type docResponse struct{ Status, Description, Content string }

// docPage renders the document for people: every operation by tag, with
// its parameters, body and answers, and the schemas.
var docPage = sync.OnceValues(func() ([]byte, error) {
	b, err := openAPI()
	if err != nil {
		return nil, err
	}
	var doc struct {
		Info struct {
			Title, Version, Description string
		}
		Paths      map[string]map[string]json.RawMessage
		Components struct {
			Schemas map[string]json.RawMessage
		}
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	var ops []docOperation
	for path, item := range doc.Paths {
		for method, raw := range item {
			if !slices.Contains([]string{"get", "post", "put", "patch", "delete"}, method) {
				continue
			}
			var op struct {
				Summary, Description string
				Tags                 []string
				Parameters           []struct {
					Name, In, Description string
					Schema                json.RawMessage
				}
				RequestBody struct {
					Content map[string]json.RawMessage
				}
				Responses map[string]struct {
					Description string
					Ref         string `json:"$ref"`
					Content     map[string]json.RawMessage
				}
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				return nil, fmt.Errorf("%s %s: %w", method, path, err)
			}
			o := docOperation{Method: strings.ToUpper(method), Path: path, Summary: op.Summary, Description: op.Description}
			if len(op.Tags) > 0 {
				o.Tag = op.Tags[0]
			}
			for _, p := range op.Parameters {
				o.Params = append(o.Params, docParam{Name: p.Name, In: p.In, Type: compact(p.Schema), Description: p.Description})
			}
			o.Body = strings.Join(slices.Sorted(maps.Keys(op.RequestBody.Content)), ", ")
			for _, code := range slices.Sorted(maps.Keys(op.Responses)) {
				r := op.Responses[code]
				desc := r.Description
				if r.Ref != "" {
					desc = strings.TrimPrefix(r.Ref, "#/components/responses/")
				}
				var content []string
				for _, ct := range slices.Sorted(maps.Keys(r.Content)) {
					content = append(content, ct+" "+compact(r.Content[ct]))
				}
				o.Responses = append(o.Responses, docResponse{Status: code, Description: desc, Content: strings.Join(content, "; ")})
			}
			ops = append(ops, o)
		}
	}
	sort.Slice(ops, func(i, j int) bool {
		if ops[i].Tag != ops[j].Tag {
			return ops[i].Tag < ops[j].Tag
		}
		if ops[i].Path != ops[j].Path {
			return ops[i].Path < ops[j].Path
		}
		return ops[i].Method < ops[j].Method
	})
	schemas := make([][2]string, 0, len(doc.Components.Schemas))
	for _, name := range slices.Sorted(maps.Keys(doc.Components.Schemas)) {
		var pretty strings.Builder
		var v any
		_ = json.Unmarshal(doc.Components.Schemas[name], &v)
		enc := json.NewEncoder(&pretty)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
		schemas = append(schemas, [2]string{name, pretty.String()})
	}
	var out strings.Builder
	err = docTemplate.Execute(&out, map[string]any{"Info": doc.Info, "Ops": ops, "Schemas": schemas})
	return []byte(out.String()), err
})

// compact shows a schema on one line, its references by name.
func compact(raw json.RawMessage) string {
	return strings.ReplaceAll(string(raw), "#/components/schemas/", "")
}

func (s *Server) docs(c *gin.Context) {
	b, err := docPage()
	if err != nil {
		s.respondError(c, err)
		return
	}
	c.Data(http.StatusOK, "text/html; charset=utf-8", b)
}

var docTemplate = template.Must(template.New("docs").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Info.Title}} reference</title>
<style>
body{font:15px/1.5 system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#1d1d1f}
h2{margin-top:2.5rem;border-bottom:1px solid #ddd;text-transform:capitalize}
.op{margin:1.2rem 0;padding:.8rem 1rem;border:1px solid #e3e3e3;border-radius:8px}
.m{display:inline-block;min-width:4.2rem;font-weight:700;font-family:monospace}
.GET{color:#0a7a3b}.POST{color:#0b5cad}.DELETE{color:#b42318}
code,pre{font-family:ui-monospace,monospace;font-size:13px}pre{background:#f6f8fa;padding:.6rem;overflow:auto}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #e3e3e3;padding:.2rem .5rem;text-align:left;vertical-align:top}
</style></head><body>
<h1>{{.Info.Title}} <small>{{.Info.Version}}</small></h1>
<p>{{.Info.Description}}</p>
<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>
{{$tag := ""}}{{range .Ops}}{{if ne .Tag $tag}}{{$tag = .Tag}}<h2 id="{{.Tag}}">{{.Tag}}</h2>{{end}}
<div class="op"><span class="m {{.Method}}">{{.Method}}</span> <code>{{.Path}}</code> — {{.Summary}}
{{if .Description}}<p>{{.Description}}</p>{{end}}
{{if .Params}}<table><tr><th>Parameter</th><th>In</th><th>Schema</th><th>Meaning</th></tr>{{range .Params}}<tr><td><code>{{.Name}}</code></td><td>{{.In}}</td><td><code>{{.Type}}</code></td><td>{{.Description}}</td></tr>{{end}}</table>{{end}}
{{if .Body}}<p>Body: <code>{{.Body}}</code></p>{{end}}
<table><tr><th>Status</th><th>Meaning</th><th>Content</th></tr>{{range .Responses}}<tr><td>{{.Status}}</td><td>{{.Description}}</td><td><code>{{.Content}}</code></td></tr>{{end}}</table>
</div>{{end}}
<h2 id="schemas">Schemas</h2>
{{range .Schemas}}<h3 id="{{index . 0}}">{{index . 0}}</h3><pre>{{index . 1}}</pre>{{end}}
</body></html>
`))
