package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

func jobsCommand(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "jobs",
		Short: "Create, list, follow and manage fine-tuning jobs",
	}
	cmd.AddCommand(jobsCreate(a), jobsList(a), jobsGet(a),
		jobsStop(a), jobsRestart(a), jobsDeploy(a),
		jobsDelete(a), jobsLogs(a), jobsMetrics(a), jobsEvents(a), jobsCheckpoints(a))
	return cmd
}

// createRequest is POST /jobs's body; hyperparameters only as given.
type createRequest struct {
	Name            string            `json:"name"`
	BaseModel       string            `json:"baseModel"`
	TrainingDataset string            `json:"trainingDataset"`
	ValidationFile  string            `json:"validationFile,omitempty"`
	Description     string            `json:"description,omitempty"`
	Suffix          string            `json:"suffix,omitempty"`
	Hardware        string            `json:"hardware,omitempty"`
	Metadata        map[string]string `json:"metadata,omitempty"`
	Hyperparameters map[string]any    `json:"hyperparameters,omitempty"`
	MaxCost         *float64          `json:"maxCost,omitempty"`
	Method          map[string]any    `json:"method,omitempty"`
}

func jobsCreate(a *app) *cobra.Command {
	var req createRequest
	var epochs, batchSize, warmupSteps, loraRank int
	var learningRate, maxCost, minDelta, beta float64
	var patience int
	var idemKey, method string
	var follow, qlora bool
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a fine-tuning job",
		Long: `Create a fine-tuning job. --training-dataset and --validation-file take a
dataset ID (ds_…), a local file (uploaded first, with its progress shown),
or a path inside the server's data directory.`,
		Example: `  tuneforge jobs create --name "Support intents" --base-model llama-3.1-8b \
    --training-dataset train.jsonl --validation-file valid.jsonl --epochs 3 --suffix support-v1 -f`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			hp := map[string]any{}
			for flag, v := range map[string]any{"epochs": epochs, "learning-rate": learningRate, "batch-size": batchSize, "warmup-steps": warmupSteps, "lora-rank": loraRank} {
				if cmd.Flags().Changed(flag) {
					hp[camel(flag)] = v
				}
			}
			if cmd.Flags().Changed("early-stopping-patience") || cmd.Flags().Changed("early-stopping-min-delta") {
				hp["earlyStopping"] = map[string]any{"patience": patience, "minDelta": minDelta}
			}
			if cmd.Flags().Changed("qlora") {
				hp["qlora"] = qlora
			}
			if cmd.Flags().Changed("dpo-beta") {
				method = "dpo"
			}
			if cmd.Flags().Changed("method") || method == "dpo" {
				req.Method = map[string]any{"type": method}
				if cmd.Flags().Changed("dpo-beta") {
					req.Method["dpo"] = map[string]any{"beta": beta}
				}
			}
			if len(hp) > 0 {
				req.Hyperparameters = hp
			}
			if cmd.Flags().Changed("max-cost") {
				req.MaxCost = &maxCost
			}
			var notLocal []error
			for _, ref := range []*string{&req.TrainingDataset, &req.ValidationFile} {
				miss, err := a.uploadIfLocal(ctx, cmd.ErrOrStderr(), ref)
				if err != nil {
					return err
				}
				if miss != nil {
					notLocal = append(notLocal, miss)
				}
			}
			header := http.Header{"Content-Type": {"application/json"}}
			if idemKey != "" {
				header.Set("Idempotency-Key", idemKey)
			}
			b, _ := json.Marshal(req)
			resp, err := a.client.send(ctx, http.MethodPost, fineTuning+"/jobs", strings.NewReader(string(b)), header)
			var apiErr *APIError
			if errors.As(err, &apiErr) && apiErr.Status == http.StatusUnprocessableEntity && len(notLocal) > 0 {
				// The server looked in its data directory; say where else.
				return fmt.Errorf("%w\n  nor a local file: %w", err, errors.Join(notLocal...))
			}
			if err != nil {
				return err
			}
			raw, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			var job Job
			if err := json.Unmarshal(raw, &job); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if a.json {
				if err := writeJSON(out, raw); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(out, "job %s created (%s)\n", oneLine(job.ID), oneLine(job.Status))
			}
			if !follow {
				return nil
			}
			return a.followLogs(ctx, cmd, job.ID, url.Values{})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Name, "name", "", "the job's name (required)")
	f.StringVar(&req.BaseModel, "base-model", "", "the base model's ID, from tuneforge base-models, or a fine-tuned model to start from, ft:<base-model>:<job-id> (required)")
	f.StringVar(&req.TrainingDataset, "training-dataset", "", "dataset ID, local file or data-directory path (required)")
	f.StringVar(&req.ValidationFile, "validation-file", "", "dataset ID, local file or data-directory path")
	f.StringVar(&req.Description, "description", "", "what the job is for")
	f.StringVar(&req.Suffix, "suffix", "", "the result model's suffix: <base-model>-<suffix>")
	f.StringVar(&req.Hardware, "hardware", "", "the hardware pool, from tuneforge hardware (default: the base model's)")
	f.StringToStringVar(&req.Metadata, "metadata", nil, "key=value pairs to attach (repeat or comma-separate)")
	f.IntVar(&epochs, "epochs", 3, "epochs to train")
	f.Float64Var(&learningRate, "learning-rate", 0.0002, "the learning rate")
	f.IntVar(&batchSize, "batch-size", 8, "examples per step")
	f.IntVar(&warmupSteps, "warmup-steps", 0, "steps over which the learning rate ramps up")
	f.IntVar(&patience, "early-stopping-patience", 3, "stop early after this many evaluations without a better validation loss (needs --validation-file)")
	f.Float64Var(&minDelta, "early-stopping-min-delta", 0, "how much lower a validation loss must be to count as better")
	f.StringVar(&method, "method", "supervised", "supervised (learns chat data) or dpo (learns preference data)")
	f.Float64Var(&beta, "dpo-beta", 0.1, "DPO's beta, how strongly the trained model is held to its reference (implies --method dpo)")
	f.BoolVar(&qlora, "qlora", false, "train LoRA adapters on 4-bit frozen base weights (needs the hf trainer)")
	f.IntVar(&loraRank, "lora-rank", 16, "the LoRA adapter's rank (a job from a fine-tuned model takes its adapter's)")
	f.Float64Var(&maxCost, "max-cost", 0, "a budget: training stops after a checkpoint when its cost reaches this (restart with a higher one to go on)")
	f.StringVar(&idemKey, "idempotency-key", "", "send Idempotency-Key, so a retried create makes one job")
	f.BoolVarP(&follow, "follow", "f", false, "follow the job's log until it ends (exit 3 unless it completes)")
	for _, name := range []string{"name", "base-model", "training-dataset"} {
		_ = cmd.MarkFlagRequired(name)
	}
	return cmd
}

// camel turns a flag name into the API's field name: learning-rate → learningRate.
func camel(flag string) string {
	parts := strings.Split(flag, "-")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, "")
}

// uploadIfLocal makes *ref, when it names a local file, a dataset's ID: of
// the organization's dataset with the same content, else of the file
// uploaded. Any other ref is left to the server, as a path inside its data
// directory; notLocal then says why no local file was read.
func (a *app) uploadIfLocal(ctx context.Context, status io.Writer, ref *string) (notLocal, err error) {
	if *ref == "" || strings.HasPrefix(*ref, "ds_") {
		return nil, nil
	}
	sum, size, err := fileSHA256(*ref)
	if err != nil {
		return err, nil
	}
	d, err := a.datasetWithContent(ctx, sum, size)
	if err != nil {
		return nil, err
	}
	if d.ID != "" {
		fmt.Fprintf(status, "reusing dataset %s for %s (same content)\n", oneLine(d.ID), *ref)
		*ref = d.ID
		return nil, nil
	}
	if d, _, err = a.upload(ctx, status, *ref, ""); err != nil {
		return nil, err
	}
	fmt.Fprintf(status, "uploaded %s as %s\n", *ref, oneLine(d.ID))
	*ref = d.ID
	return nil, nil
}

func jobsList(a *app) *cobra.Command {
	var status, baseModel, search, sort string
	var limit, offset int
	var metadata map[string]string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List jobs: filter by status, base model, metadata or a search term; sort; page",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			q := url.Values{"limit": {strconv.Itoa(limit)}, "offset": {strconv.Itoa(offset)}}
			for k, v := range map[string]string{"status": status, "baseModel": baseModel, "search": search, "sort": sort} {
				if v != "" {
					q.Set(k, v)
				}
			}
			for k, v := range metadata {
				q.Set("metadata["+k+"]", v)
			}
			var page struct {
				Count      int64 `json:"count"`
				CountExact bool  `json:"countExact"`
				Jobs       []Job `json:"jobs"`
			}
			raw, err := a.client.get(cmd.Context(), fineTuning+"/jobs?"+q.Encode(), &page)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(page.Jobs))
			for i, j := range page.Jobs {
				rows[i] = []string{j.ID, j.Name, j.BaseModel, j.statusLabel(), when(&j.CreatedAt)}
			}
			if err := table(cmd.OutOrStdout(), []string{"ID", "NAME", "BASE MODEL", "STATUS", "CREATED"}, rows); err != nil {
				return err
			}
			atLeast := ""
			if !page.CountExact {
				atLeast = "at least "
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "%d of %s%d jobs\n", len(page.Jobs), atLeast, page.Count)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&status, "status", "", "queued, running, completed, failed, stopped or deployed")
	f.StringVar(&baseModel, "base-model", "", "a base model's ID")
	f.StringVar(&search, "search", "", "words in the name or description")
	f.StringVar(&sort, "sort", "", "field:asc or field:desc (createdAt, updatedAt, startedAt, finishedAt, name, status)")
	f.StringToStringVar(&metadata, "metadata", nil, "key=value pairs the jobs must hold")
	f.IntVar(&limit, "limit", 20, "how many to list (1 to 100)")
	f.IntVar(&offset, "offset", 0, "how many to skip")
	return cmd
}

func jobsGet(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "get ID",
		Short: "Show a job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var j Job
			raw, err := a.client.get(cmd.Context(), jobPath(args[0]), &j)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			return showJob(cmd.OutOrStdout(), j)
		},
	}
}

// showJob writes a job's fields for people.
func showJob(w io.Writer, j Job) error {
	hp := j.Hyperparameters
	epoch := "-"
	if j.Metrics.Epoch != nil {
		epoch = fmt.Sprintf("%d of %d", *j.Metrics.Epoch, hp.Epochs)
	}
	var md []string
	for _, k := range slices.Sorted(maps.Keys(j.Metadata)) {
		md = append(md, k+"="+j.Metadata[k])
	}
	rows := [][2]string{
		{"ID", j.ID}, {"Name", j.Name}, {"Status", j.statusLabel()}, {"Base model", j.BaseModel}, {"Hardware", j.Hardware},
		{"Training file", j.TrainingFile + " (" + j.TrainingDataset + ")"}, {"Validation file", orDash(j.ValidationFile)},
		{"Hyperparameters", fmt.Sprintf("epochs %d, learning rate %g, batch size %d, warmup steps %d", hp.Epochs, hp.LearningRate, hp.BatchSize, hp.WarmupSteps)},
		{"Epoch", epoch}, {"Training loss", loss(j.Metrics.TrainingLoss)}, {"Validation loss", loss(j.Metrics.ValidationLoss)},
		{"Trained tokens", strconv.FormatInt(j.TrainedTokens, 10)}, {"Result model", orDash(j.ResultModel)}, {"Error", cliCommands(j.Error.String())},
	}
	// Servers before these fields send neither.
	if j.CostSoFar != nil {
		cost := usd(*j.CostSoFar)
		if j.MaxCost != nil {
			cost += " (budget " + usd(*j.MaxCost) + ")"
		}
		rows = append(rows, [2]string{"Cost so far", cost})
	}
	// Servers before methods send none.
	if m := j.Method; m.Type != "" {
		method := m.Type
		if m.DPO != nil {
			method += fmt.Sprintf(", beta %g", m.DPO.Beta)
		}
		if hp.QLoRA {
			method += ", QLoRA"
		}
		if hp.LoRARank != 0 {
			method += fmt.Sprintf(", LoRA rank %d", hp.LoRARank)
		}
		if j.InitFrom != nil {
			method += ", from the adapter of " + *j.InitFrom
		}
		rows = append(rows, [2]string{"Method", method})
	}
	if j.Actions != nil {
		actions := strings.Join(j.Actions, ", ")
		if actions == "" {
			actions = "none"
		}
		rows = append(rows, [2]string{"Actions", actions})
	}
	return fields(w, append(rows, [][2]string{
		{"Metadata", strings.Join(md, ", ")}, {"Owner", j.Owner},
		{"Created", when(&j.CreatedAt)}, {"Started", when(j.StartedAt)}, {"Finished", when(j.FinishedAt)},
	}...))
}

// transitioned prints a stop, restart or deploy's answer.
func (a *app) transitioned(cmd *cobra.Command, raw []byte) error {
	if a.json {
		return writeJSON(cmd.OutOrStdout(), raw)
	}
	var res struct {
		ID          string `json:"id"`
		Status      string `json:"status"`
		Message     string `json:"message"`
		ResultModel string `json:"resultModel"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return err
	}
	msg := fmt.Sprintf("%s: %s (%s)", res.ID, cliCommands(res.Message), res.Status)
	if res.ResultModel != "" {
		msg += "; model " + res.ResultModel
	}
	fmt.Fprintln(cmd.OutOrStdout(), oneLine(msg))
	return nil
}

// jobAction posts body to the job's action route and prints the outcome.
func (a *app) jobAction(cmd *cobra.Command, id, action string, body any) error {
	raw, err := a.client.call(cmd.Context(), http.MethodPost, jobPath(id, "/"+action), body)
	if err != nil {
		return err
	}
	return a.transitioned(cmd, raw)
}

func jobsStop(a *app) *cobra.Command {
	var cancel bool
	cmd := &cobra.Command{
		Use:   "stop ID",
		Short: "Stop a queued or running job (it keeps its checkpoint; restart resumes it)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body any
			if cancel {
				body = map[string]bool{"cancel": true}
			}
			return a.jobAction(cmd, args[0], "stop", body)
		},
	}
	cmd.Flags().BoolVar(&cancel, "cancel", false, "cancel for good: the job cannot be restarted")
	return cmd
}

func jobsRestart(a *app) *cobra.Command {
	var from, hardware string
	var batchSize int
	var maxCost float64
	cmd := &cobra.Command{
		Use:   "restart ID",
		Short: "Restart a stopped or failed job from its latest checkpoint, or from a kept one",
		Example: `  tuneforge jobs restart ftjob_… --batch-size 4          # after an out-of-memory failure
  tuneforge jobs restart ftjob_… --max-cost 20           # after its budget ran out`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			body := map[string]any{}
			if from != "" {
				body["fromCheckpoint"] = from
			}
			if hardware != "" {
				body["hardware"] = hardware
			}
			if cmd.Flags().Changed("batch-size") {
				body["batchSize"] = batchSize
			}
			if cmd.Flags().Changed("max-cost") {
				body["maxCost"] = maxCost
			}
			if len(body) == 0 {
				return a.jobAction(cmd, args[0], "restart", nil)
			}
			return a.jobAction(cmd, args[0], "restart", body)
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from-checkpoint", "", "a checkpoint ID, from tuneforge jobs checkpoints ID")
	f.IntVar(&batchSize, "batch-size", 0, "a new batch size (examples per step)")
	f.StringVar(&hardware, "hardware", "", "a new hardware pool, from tuneforge hardware")
	f.Float64Var(&maxCost, "max-cost", 0, "a new budget for the whole job, all runs counted")
	return cmd
}

func jobsDeploy(a *app) *cobra.Command {
	var checkpoint string
	cmd := &cobra.Command{
		Use:   "deploy ID",
		Short: "Deploy a completed job's model, so `tuneforge chat` and chat completions answer with it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var body any
			if checkpoint != "" {
				body = map[string]string{"checkpoint": checkpoint}
			}
			return a.jobAction(cmd, args[0], "deploy", body)
		},
	}
	cmd.Flags().StringVar(&checkpoint, "checkpoint", "", `deploy this checkpoint (an ID, or "best") instead of the final model`)
	return cmd
}

func jobsDelete(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a job with its logs, metrics, checkpoints and model (a running job must be stopped first)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := a.client.call(cmd.Context(), http.MethodDelete, jobPath(args[0]), nil); err != nil {
				return err
			}
			if !a.json {
				fmt.Fprintf(cmd.OutOrStdout(), "job %s deleted\n", args[0])
			}
			return nil
		},
	}
}

type logLine struct {
	ID        int64     `json:"id"`
	Timestamp time.Time `json:"timestamp"`
	Level     string    `json:"level"`
	Message   string    `json:"message"`
}

func (l logLine) String() string {
	return fmt.Sprintf("%s  %-5s  %s", l.Timestamp.Local().Format("15:04:05.000"), oneLine(l.Level), text(l.Message))
}

func jobsLogs(a *app) *cobra.Command {
	var follow bool
	var lines int
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a job's log; with -f, follow it until the job ends",
		Long: `Print a job's newest log lines. With -f (--follow) new lines are printed as
they are written, until the job's run ends; on a terminal a progress bar
shows its epoch, step and loss. With -f the exit code says how the job
ended: 0 completed or deployed, 3 failed, stopped or deleted.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := url.Values{"lines": {strconv.Itoa(lines)}}
			if follow {
				return a.followLogs(cmd.Context(), cmd, args[0], q)
			}
			var page struct {
				Logs []logLine `json:"logs"`
			}
			raw, err := a.client.get(cmd.Context(), jobPath(args[0], "/logs?"+q.Encode()), &page)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			for _, l := range page.Logs {
				fmt.Fprintln(cmd.OutOrStdout(), l)
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the log until the job ends")
	cmd.Flags().IntVar(&lines, "lines", 100, "how many of the newest lines to print first (1 to 10000)")
	return cmd
}

type metricPoint struct {
	Step           int      `json:"step"`
	Epoch          int      `json:"epoch"`
	TrainingLoss   float64  `json:"trainingLoss"`
	ValidationLoss *float64 `json:"validationLoss"`
	LearningRate   float64  `json:"learningRate"`
	Tokens         int64    `json:"tokens"`
}

type jobMetrics struct {
	Metrics struct {
		CurrentEpoch int           `json:"currentEpoch"`
		TotalEpochs  int           `json:"totalEpochs"`
		Steps        []metricPoint `json:"steps"`
	} `json:"metrics"`
}

func jobsMetrics(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "metrics ID",
		Short: "Print a job's metric points: step, epoch, losses, learning rate, tokens",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var m jobMetrics
			raw, err := a.client.get(cmd.Context(), jobPath(args[0], "/metrics"), &m)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(m.Metrics.Steps))
			for i, p := range m.Metrics.Steps {
				rows[i] = []string{strconv.Itoa(p.Step), strconv.Itoa(p.Epoch), loss(&p.TrainingLoss), loss(p.ValidationLoss),
					fmt.Sprintf("%.3g", p.LearningRate), strconv.FormatInt(p.Tokens, 10)}
			}
			return table(cmd.OutOrStdout(), []string{"STEP", "EPOCH", "TRAINING LOSS", "VALIDATION LOSS", "LEARNING RATE", "TOKENS"}, rows)
		},
	}
}

func jobsEvents(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "events ID",
		Short: "Print what happened to a job, and why, oldest first",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			type event struct {
				ID        string    `json:"id"`
				Type      string    `json:"type"`
				Level     string    `json:"level"`
				Message   string    `json:"message"`
				CreatedAt time.Time `json:"createdAt"`
			}
			var all []event
			var raws []json.RawMessage
			after := ""
			for {
				var page struct {
					Events  []json.RawMessage `json:"events"`
					HasMore bool              `json:"hasMore"`
				}
				q := url.Values{"limit": {"1000"}}
				if after != "" {
					q.Set("after", after)
				}
				if _, err := a.client.get(cmd.Context(), jobPath(args[0], "/events?"+q.Encode()), &page); err != nil {
					return err
				}
				for _, r := range page.Events {
					var e event
					if err := json.Unmarshal(r, &e); err != nil {
						return err
					}
					all, raws, after = append(all, e), append(raws, r), e.ID
				}
				if !page.HasMore {
					break
				}
			}
			if a.json {
				b, _ := json.Marshal(map[string]any{"jobId": args[0], "events": raws, "hasMore": false})
				return writeJSON(cmd.OutOrStdout(), b)
			}
			rows := make([][]string, len(all))
			for i, e := range all {
				rows[i] = []string{when(&e.CreatedAt), e.Type, e.Message}
			}
			return table(cmd.OutOrStdout(), []string{"TIME", "EVENT", "MESSAGE"}, rows)
		},
	}
}

func jobsCheckpoints(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "checkpoints ID",
		Short: "List the checkpoints a job keeps (restart --from-checkpoint takes their IDs)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var page struct {
				Checkpoints []struct {
					ID             string    `json:"id"`
					Step           int       `json:"step"`
					Epoch          int       `json:"epoch"`
					TrainingLoss   *float64  `json:"trainingLoss"`
					ValidationLoss *float64  `json:"validationLoss"`
					Bytes          int64     `json:"bytes"`
					CreatedAt      time.Time `json:"createdAt"`
				} `json:"checkpoints"`
			}
			raw, err := a.client.get(cmd.Context(), jobPath(args[0], "/checkpoints"), &page)
			if err != nil {
				return err
			}
			if a.json {
				return writeJSON(cmd.OutOrStdout(), raw)
			}
			rows := make([][]string, len(page.Checkpoints))
			for i, k := range page.Checkpoints {
				rows[i] = []string{k.ID, strconv.Itoa(k.Step), strconv.Itoa(k.Epoch), loss(k.TrainingLoss), loss(k.ValidationLoss),
					humanBytes(k.Bytes), when(&k.CreatedAt)}
			}
			return table(cmd.OutOrStdout(), []string{"ID", "STEP", "EPOCH", "TRAINING LOSS", "VALIDATION LOSS", "SIZE", "CREATED"}, rows)
		},
	}
}
