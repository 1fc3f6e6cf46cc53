package server_test

import (
	"strings"
	"testing"
)

// A body that does not decode is answered with what the field must be and
// what was sent, and an unknown field with the one it was probably meant
// to be, in each API's own field names.
func TestJSONDecodeMessages(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	seed := func(extra string) string {
		return `{"name": "n", "baseModel": "llama-3.1-8b", "trainingDataset": "ds_x"` + extra + `}`
	}
	openai := func(extra string) string {
		return `{"model": "llama-3.1-8b", "training_file": "ds_x"` + extra + `}`
	}
	for _, tc := range []struct {
		path, body, field, message string
	}{
		{jobsPath, seed(`, "hyperparameters": {"batchSize": "3"}`), "hyperparameters.batchSize",
			`hyperparameters.batchSize: must be an integer, got the string "3"; send the number without quotes`},
		{jobsPath, seed(`, "hyperparameters": {"batchSize": 1e9}`), "hyperparameters.batchSize",
			"must be an integer, got 1e9; write whole numbers without an exponent or decimal point, such as 1000000000"},
		{jobsPath, seed(`, "hyperparameters": {"batchSize": 1.5}`), "hyperparameters.batchSize",
			"must be an integer, got 1.5, which is not a whole number"},
		{jobsPath, seed(`, "hyperparameters": {"epochs": 1e30}`), "hyperparameters.epochs",
			"must be an integer, got 1e30, which is out of range"},
		{jobsPath, seed(`, "hyperparameters": {"learningRate": "fast"}`), "hyperparameters.learningRate",
			`must be a number, got the string "fast"`},
		{jobsPath, seed(`, "description": 5`), "description", "description: must be a string, got the number 5"},
		{jobsPath, seed(`, "metadata": [true]`), "metadata", "metadata: must be an object, got an array"},
		{jobsPath, seed(`, "base_model": "x"`), "base_model", `unknown field "base_model"; did you mean "baseModel"?`},
		{jobsPath, seed(`, "trainingDatset": "x"`), "trainingDatset", `unknown field "trainingDatset"; did you mean "trainingDataset"?`},
		{jobsPath, seed(`, "epochs": 3`), "epochs", `unknown field "epochs"; did you mean "hyperparameters.epochs"?`},
		{jobsPath, seed(`, "hyperparameters": {"batch_size": 8}`), "hyperparameters.batch_size",
			`unknown field "hyperparameters.batch_size"; did you mean "hyperparameters.batchSize"?`},
		{jobsPath, seed(`, "xyzzy": 1`), "xyzzy", `unknown field "xyzzy"`},
		{"/api/v1/fine-tuning/estimate-cost", `{"baseModel": "llama-3.1-8b", "datasetSize": "10"}`, "datasetSize",
			`datasetSize: must be an integer, got the string "10"`},
		{"/v1/fine_tuning/jobs", openai(`, "seed": "7"`), "seed", `seed: must be an integer, got the string "7"`},
		{"/v1/fine_tuning/jobs", openai(`, "suffix": false`), "suffix", "suffix: must be a string, got the boolean false"},
		{"/v1/fine_tuning/jobs", openai(`, "trainingFile": "x"`), "trainingFile", `unknown field "trainingFile"; did you mean "training_file"?`},
		{"/v1/fine_tuning/jobs", openai(`, "n_epochs": 2`), "n_epochs", `unknown field "n_epochs"; did you mean "hyperparameters.n_epochs"?`},
		{"/v1/fine_tuning/jobs", openai(`, "method": {"type": "supervised", "supervised": {"hyperparamters": {}}}`), "method.supervised.hyperparamters",
			`did you mean "method.supervised.hyperparameters"?`},
	} {
		r := org.Do(t, "POST", tc.path, tc.body)
		e, _ := r.Body["error"].(map[string]any)
		msg, _ := e["message"].(string)
		field := ""
		if details, _ := e["details"].([]any); len(details) > 0 {
			field, _ = details[0].(map[string]any)["field"].(string)
		} else if p, ok := e["param"].(string); ok {
			field = p
		}
		if r.Status != 400 || field != tc.field || !strings.Contains(msg, tc.message) {
			t.Errorf("POST %s %s: %d %s; want 400 on %s saying %q", tc.path, tc.body, r.Status, r.Raw, tc.field, tc.message)
		}
		if strings.Contains(msg, "xyzzy") && strings.Contains(msg, "did you mean") {
			t.Errorf("a suggestion for a field like no other: %s", msg)
		}
	}
}
