package server_test

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/tuneforge/tuneforge/internal/testenv"
)

const estimatePath = "/api/v1/fine-tuning/estimate-cost"

// memoryEstimate asks estimate-cost for the memory estimate of a job.
func memoryEstimate(t *testing.T, org *testenv.Org, model, hardware string, qlora bool, method string) map[string]any {
	t.Helper()
	body := map[string]any{"baseModel": model, "datasetSize": 1000, "hardware": hardware, "qlora": qlora}
	if method != "" {
		body["method"] = map[string]any{"type": method}
	}
	r := org.Do(t, "POST", estimatePath, body)
	expect(t, r, 200)
	return r.Body["assumptions"].(map[string]any)["memory"].(map[string]any)
}

// Every model of the catalog fits its default hardware, and the catalog's
// hardware runs the pairings: 70B with LoRA in bf16 sharded over
// four 80 GB GPUs, 70B with QLoRA on one 80 GB GPU, 8B with QLoRA on a
// 40 GB one.
func TestCatalogFitsItsHardware(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	org := env.NewOrg(t)
	models, err := env.Store.BaseModels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pools, err := env.Store.HardwarePools(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range models {
		// The architecture agrees with the catalog's parameter count.
		if b := float64(m.Architecture.Parameters()) / 1e9; math.Abs(b-m.ParametersBillions)/m.ParametersBillions > 0.05 {
			t.Errorf("%s: its architecture has %.2fB parameters, the catalog says %gB", m.ID, b, m.ParametersBillions)
		}
		if e := memoryEstimate(t, org, m.ID, "", false, ""); e["fits"] != true {
			t.Errorf("%s does not fit its default hardware %s: %v", m.ID, m.DefaultHardwareID, e)
		}
		for _, hw := range pools {
			for _, qlora := range []bool{false, true} {
				for _, method := range []string{"supervised", "dpo"} {
					e := memoryEstimate(t, org, m.ID, hw.ID, qlora, method)
					t.Logf("%-15s %-16s qlora %-5v %-10s %6.1f of %v GiB a GPU, fits %v", m.ID, hw.ID, qlora, method,
						e["perGpuGiB"], e["gpuMemoryGiB"], e["fits"])
				}
			}
		}
	}
	for _, tc := range []struct {
		model, hardware string
		qlora, fits     bool
		note            []string
	}{
		{"llama-3.1-70b", "gpu-a100-80gb-x4", false, true, nil},
		{"llama-3.1-70b", "gpu-a100-80gb", true, true, nil},
		{"llama-3.1-8b", "gpu-a100-40gb", true, true, nil},
		{"llama-3.1-70b", "gpu-a100-80gb", false, false, []string{"it fits on gpu-a100-80gb-x4", "with qlora (4-bit base weights) it fits on gpu-a100-80gb ("}},
		{"llama-3.1-70b", "gpu-a100-80gb-x4", true, false, []string{"QLoRA trains on one GPU, and gpu-a100-80gb-x4 has 4", "it fits on gpu-a100-80gb ("}},
	} {
		e := memoryEstimate(t, org, tc.model, tc.hardware, tc.qlora, "")
		note, _ := e["note"].(string)
		if e["fits"] != tc.fits || !containsAll(note, tc.note) {
			t.Errorf("%s on %s, qlora %v: %v; want fits %v, a note with %q", tc.model, tc.hardware, tc.qlora, e, tc.fits, tc.note)
		}
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// The estimate weighs the adapter at the job's LoRA rank: its weights,
// gradients and AdamW moments grow with it.
func TestMemoryEstimateOfLoRARank(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	adapter := func(rank any) float64 {
		r := org.Do(t, "POST", estimatePath, map[string]any{"baseModel": "llama-3.1-8b", "datasetSize": 1000, "hardware": "gpu-a100-40gb", "loraRank": rank})
		expect(t, r, 200)
		return r.Body["assumptions"].(map[string]any)["memory"].(map[string]any)["termsGiB"].(map[string]any)["adapter"].(float64)
	}
	if def, at16, at64 := adapter(nil), adapter(16), adapter(64); def != at16 || !(at64 > 3.5*at16) {
		t.Errorf("adapter GiB: %v by default, %v at rank 16, %v at rank 64; want the default 16's, and 64's four times as much", def, at16, at64)
	}
	expect(t, org.Do(t, "POST", estimatePath, map[string]any{"baseModel": "llama-3.1-8b", "datasetSize": 1000, "loraRank": 65}), 400,
		`"field":"loraRank"`)
}

// Create refuses, with code capacity, a job that could never run on its
// hardware, naming what would fit; so does a restart onto such hardware.
func TestCapacityRefusal(t *testing.T) {
	t.Parallel()
	org := env.NewOrg(t)
	ds := org.Upload(t, "tickets.jsonl", testenv.Tickets(20, 71))
	create := func(body map[string]any) testenv.Response {
		req := map[string]any{"name": "big", "baseModel": "llama-3.1-70b", "trainingDataset": ds}
		for k, v := range body {
			req[k] = v
		}
		return org.Do(t, "POST", jobsPath, req)
	}
	r := create(map[string]any{"hardware": "gpu-a100-80gb"})
	expect(t, r, 422, `"code":"capacity"`, `"field":"hardware"`, "llama-3.1-70b LoRA in bf16 needs an estimated",
		"on each GPU of gpu-a100-80gb, which has 80 GiB", "it fits on gpu-a100-80gb-x4 (", "with qlora (4-bit base weights) it fits on gpu-a100-80gb (")
	r = create(map[string]any{"hardware": "gpu-a100-80gb-x4", "hyperparameters": map[string]any{"qlora": true}})
	expect(t, r, 422, `"code":"capacity"`, "QLoRA trains on one GPU, and gpu-a100-80gb-x4 has 4", "it fits on gpu-a100-80gb (")
	// The old check's case: 70B on one 40 GB GPU fits in no way but the x4 pool.
	expect(t, create(map[string]any{"hardware": "gpu-a100-40gb"}), 422, `"code":"capacity"`, "it fits on gpu-a100-80gb-x4 (")
	// The adapter's rank counts: 70B with QLoRA fits one 80 GB GPU at the default rank, not at 64.
	expect(t, create(map[string]any{"hardware": "gpu-a100-80gb", "hyperparameters": map[string]any{"qlora": true, "loraRank": 64}}), 422,
		`"code":"capacity"`, "llama-3.1-70b QLoRA (4-bit) at rank 64 needs an estimated")
	// A rank the inference backends would not load is refused.
	for _, rank := range []int{0, 65} {
		expect(t, create(map[string]any{"hyperparameters": map[string]any{"loraRank": rank}}), 400,
			`"field":"hyperparameters.loraRank"`, "must be an integer from 1 to 64, the most the inference backends serve")
	}

	// OpenAI's API: its status for a request it cannot serve, and the code.
	v1 := env.Do(t, org.Key, "POST", "/v1/fine_tuning/jobs", map[string]any{"model": "llama-3.1-70b", "training_file": ds,
		"hyperparameters": map[string]any{"qlora": true}}, nil)
	expect(t, v1, 400, `"code":"capacity"`, `"param":"model"`, "QLoRA trains on one GPU")

	// A restart onto hardware the job cannot fit is refused before anything changes.
	r = create(nil)
	expect(t, r, 201)
	id := r.Body["id"].(string)
	t.Cleanup(func() { org.Do(t, "POST", jobsPath+"/"+id+"/stop", map[string]any{"cancel": true}) })
	expect(t, org.Do(t, "POST", jobsPath+"/"+id+"/restart", map[string]any{"hardware": "gpu-a100-80gb"}), 422,
		`"code":"capacity"`, `"field":"hardware"`, "it fits on gpu-a100-80gb-x4")
	expect(t, org.Do(t, "GET", jobsPath+"/"+id, nil), 200, `"hardware":"gpu-a100-80gb-x4"`)
}
