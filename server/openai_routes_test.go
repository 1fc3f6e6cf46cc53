package server

import "testing"

func TestOpenAIRoutes(t *testing.T) {
	for in, want := range map[string]string{
		"Delete datasets you no longer need (DELETE /api/v1/fine-tuning/datasets/{id}) and try again": "Delete datasets you no longer need (DELETE /v1/files/{id}) and try again",
		"upload one with POST /api/v1/fine-tuning/datasets":                                           "upload one with POST /v1/files",
		"GET /api/v1/fine-tuning/jobs/ftjob_x/checkpoints lists those it keeps":                       "GET /v1/fine_tuning/jobs/ftjob_x/checkpoints lists those it keeps",
		"stop it (POST /api/v1/fine-tuning/jobs/ftjob_x/stop) first":                                  "stop it (POST /v1/fine_tuning/jobs/ftjob_x/pause) first",
		// Routes /v1 has no counterpart of stay.
		"delete those jobs (DELETE /api/v1/fine-tuning/jobs/{id})":          "delete those jobs (DELETE /api/v1/fine-tuning/jobs/{id})",
		"GET /api/v1/fine-tuning/base-models lists the choices":             "GET /api/v1/fine-tuning/base-models lists the choices",
		"POST /api/v1/fine-tuning/jobs/ftjob_x/deploy with {\"checkpoint\"": "POST /api/v1/fine-tuning/jobs/ftjob_x/deploy with {\"checkpoint\"",
	} {
		if got := openAIRoutes(in); got != want {
			t.Errorf("openAIRoutes(%q) = %q; want %q", in, got, want)
		}
	}
}
