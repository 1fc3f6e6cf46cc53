package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// jsonError explains a failure to decode body into dst to the client: what
// the field must be and what was sent, or the field an unknown one was
// probably meant to be. body is nil when it was not read whole.
func jsonError(err error, body []byte, dst any) error {
	var (
		maxErr    *http.MaxBytesError
		syntaxErr *json.SyntaxError
		typeErr   *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &maxErr):
		return newError(http.StatusRequestEntityTooLarge, "payload_too_large", "the request body exceeds %d bytes", maxErr.Limit)
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errStalled
	case errors.Is(err, io.EOF):
		return badRequest("the request body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("the request body is not complete JSON")
	case errors.As(err, &syntaxErr):
		return badRequest("malformed JSON at byte %d: %v", syntaxErr.Offset, syntaxErr)
	case errors.As(err, &typeErr):
		if typeErr.Field == "" {
			return badRequest("the request body must be a JSON object")
		}
		msg := "must be " + jsonType(typeErr.Type) + ", got " + sentValue(typeErr, body)
		return &apiError{Status: http.StatusBadRequest, Code: "invalid_request",
			Message: typeErr.Field + ": " + msg, Details: []fieldDetail{{Field: typeErr.Field, Message: msg}}}
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name, _ := strconv.Unquote(strings.TrimPrefix(err.Error(), "json: unknown field "))
		return unknownFieldError(name, body, dst)
	}
	return badRequest("invalid JSON: %v", err)
}

// jsonType names what a value of t is written as in JSON, with its article.
func jsonType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "a boolean"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "an object"
}

// sentValue describes the value a type error is about, and for a number
// into an integer what is wrong with it.
func sentValue(e *json.UnmarshalTypeError, body []byte) string {
	if strings.HasPrefix(e.Value, "number ") {
		return badNumber(strings.TrimPrefix(e.Value, "number "), e.Type)
	}
	switch v := literalAt(body, e.Offset).(type) {
	case string:
		desc := fmt.Sprintf("the string %q", truncate(v, 40))
		numeric := jsonType(e.Type) == "an integer" || jsonType(e.Type) == "a number"
		if _, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && numeric {
			desc += "; send the number without quotes"
		}
		return desc
	case json.Number:
		return "the number " + string(v)
	case bool:
		return "the boolean " + strconv.FormatBool(v)
	}
	// An array or object, or a scalar the body does not show where the
	// decoder says.
	switch e.Value {
	case "array", "object":
		return "an " + e.Value
	case "bool":
		return "a boolean"
	}
	return "a " + e.Value
}

// badNumber says why the number literal does not fit t.
func badNumber(lit string, t reflect.Type) string {
	f, err := strconv.ParseFloat(lit, 64)
	// The type's range is [lo, end).
	var lo, end float64
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		end = math.Exp2(float64(t.Bits() - 1))
		lo = -end
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		end = math.Exp2(float64(t.Bits()))
	default:
		return lit + ", which is out of range"
	}
	switch {
	case err != nil || f < lo || f >= end:
		return lit + ", which is out of range"
	case f != math.Trunc(f):
		return lit + ", which is not a whole number"
	}
	// A whole number in range, written with an exponent or a fraction.
	return fmt.Sprintf("%s; write whole numbers without an exponent or decimal point, such as %.0f", lit, f)
}

// literalAt returns the scalar of body that ends at offset (where the
// decoder reports a type error), numbers as json.Number; nil when none does.
func literalAt(body []byte, offset int64) any {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil
		}
		if dec.InputOffset() == offset {
			return tok
		}
		if dec.InputOffset() > offset {
			return nil
		}
	}
}

func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	return string([]rune(s)[:n]) + "…"
}

// unknownFieldError names the unknown field by its path in the request and
// suggests the field it was probably meant to be.
func unknownFieldError(name string, body []byte, dst any) error {
	path, suggestion := name, ""
	var doc any
	if dst != nil && json.Unmarshal(body, &doc) == nil {
		if p, t, ok := findUnknown(doc, reflect.TypeOf(dst), name, ""); ok {
			path = p
			if s := suggestField(name, t); s != "" {
				suggestion = joinPath(strings.TrimSuffix(strings.TrimSuffix(p, name), "."), s)
			}
		}
	}
	msg := fmt.Sprintf("unknown field %q", path)
	detail := "unknown field"
	if suggestion != "" {
		msg += fmt.Sprintf("; did you mean %q?", suggestion)
		detail += fmt.Sprintf("; did you mean %q?", suggestion)
	}
	return &apiError{Status: http.StatusBadRequest, Code: "invalid_request", Message: msg,
		Details: []fieldDetail{{Field: path, Message: detail}}}
}

var unmarshalerType = reflect.TypeFor[json.Unmarshaler]()

// jsonField is a struct field as encoding/json names it.
type jsonField struct {
	name string
	typ  reflect.Type
}

// jsonFields lists the fields encoding/json decodes into struct type t.
func jsonFields(t reflect.Type) []jsonField {
	var out []jsonField
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch {
		case f.Anonymous && name == "" && ft.Kind() == reflect.Struct:
			out = append(out, jsonFields(ft)...)
			continue
		case !f.IsExported():
			continue
		case name == "":
			name = f.Name
		}
		out = append(out, jsonField{name, f.Type})
	}
	return out
}

// fieldNamed finds the field encoding/json decodes key into: an exact
// match, else one that differs only in case.
func fieldNamed(fields []jsonField, key string) (jsonField, bool) {
	for _, f := range fields {
		if f.name == key {
			return f, true
		}
	}
	for _, f := range fields {
		if strings.EqualFold(f.name, key) {
			return f, true
		}
	}
	return jsonField{}, false
}

// findUnknown walks the decoded request v along type t to the object that
// holds the unknown key name, returning the key's path and that object's
// struct type.
func findUnknown(v any, t reflect.Type, name, path string) (string, reflect.Type, bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return "", nil, false
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return "", nil, false
		}
		fields := jsonFields(t)
		if _, sent := obj[name]; sent {
			if _, known := fieldNamed(fields, name); !known {
				return joinPath(path, name), t, true
			}
		}
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if f, ok := fieldNamed(fields, k); ok {
				if p, st, found := findUnknown(obj[k], f.typ, name, joinPath(path, f.name)); found {
					return p, st, true
				}
			}
		}
	case reflect.Slice, reflect.Array:
		arr, _ := v.([]any)
		for i, e := range arr {
			if p, st, found := findUnknown(e, t.Elem(), name, fmt.Sprintf("%s[%d]", path, i)); found {
				return p, st, true
			}
		}
	case reflect.Map:
		obj, _ := v.(map[string]any)
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if p, st, found := findUnknown(obj[k], t.Elem(), name, joinPath(path, k)); found {
				return p, st, true
			}
		}
	}
	return "", nil, false
}

func joinPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// suggestField picks the field of struct t that name was probably meant to
// be, relative to t: one of its own spelt alike (case, '_' and '-' aside,
// or a typo or two), else a nested one of the same name
// ("hyperparameters.epochs" for "epochs"); "" when none is close.
func suggestField(name string, t reflect.Type) string {
	norm := func(s string) string { return strings.ToLower(strings.NewReplacer("_", "", "-", "").Replace(s)) }
	want := norm(name)
	best, bestDist := "", max(1, len(want)/4)+1
	for _, f := range jsonFields(t) {
		if d := editDistance(want, norm(f.name)); d < bestDist {
			best, bestDist = f.name, d
		}
	}
	if best != "" {
		return best
	}
	for _, f := range jsonFields(t) {
		ft := f.typ
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() != reflect.Struct || reflect.PointerTo(ft).Implements(unmarshalerType) {
			continue
		}
		for _, sub := range jsonFields(ft) {
			if norm(sub.name) == want {
				return f.name + "." + sub.name
			}
		}
	}
	return ""
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
