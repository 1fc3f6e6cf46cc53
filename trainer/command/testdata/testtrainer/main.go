// Command testtrainer is a trainer for the tests of tuneforge's trainer
// protocol (docs/trainer-protocol.md). It trains for real, with tuneforge's
// builtin trainer, and misbehaves on request: it crashes, hangs, ignores
// SIGTERM, leaves a child process, prints garbage, or exits with a chosen
// code. It reports each evaluation's progress ("evaluating" messages).
//
// It spells the protocol out itself (config.json and the stdout messages)
// rather than sharing the worker's Go types, so a change to one side that
// breaks the documented wire format shows up in the tests.
//
// Flags (all optional):
//
//	--eval-every N          eval line every N steps (0: only at the end of each epoch)
//	--checkpoint-every N    checkpoint every N steps (0: only at the end)
//	--step-delay DURATION   sleep after each step, so a stop lands mid-epoch
//	--crash-at-step N       exit 1 on reaching step N (see --crash-marker)
//	--crash-marker FILE     crash only if FILE is missing, creating it first
//	--hang-at-step N        on reaching step N, stop reporting and sleep for ever
//	--hang-in-eval          hang in the evaluation at that step instead (see --eval-every)
//	--hang-marker FILE      hang only if FILE is missing, creating it first
//	--ignore-sigterm        ignore SIGTERM, so the worker must SIGKILL
//	--spawn-child           start `sleep 300` in the process group and log its pid
//	--garbage               print non-messages, a 1 MiB line and a flood first
//	--odd-text              print text a database refuses first: long lines of multibyte
//	                        characters, NULs, bytes that are not UTF-8 (stdout and stderr)
//	--print-env             print the environment it was given, a variable a line
//	--log-lines N           log N lines ("flood i") before training, as fast as it can
//	--exit-code N           exit N after the first progress line
//	--no-final-checkpoint   skip the checkpoint before the result (a protocol violation)
//	--slow-stop DURATION    on SIGTERM, take this long before the last checkpoint (a large one)
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tuneforge/tuneforge/dataset"
	"github.com/tuneforge/tuneforge/trainer"
)

var (
	evalEvery         = flag.Int("eval-every", 0, "evaluate every N steps (0: at the end of each epoch only)")
	checkpointEvery   = flag.Int("checkpoint-every", 0, "checkpoint every N steps (0: at the end only)")
	stepDelay         = flag.Duration("step-delay", 0, "sleep after each step, so a stop lands mid-epoch")
	crashAtStep       = flag.Int("crash-at-step", 0, "exit 1 on reaching this step")
	crashMarker       = flag.String("crash-marker", "", "crash only if this file is missing, and create it")
	hangAtStep        = flag.Int("hang-at-step", 0, "stop reporting and sleep for ever on reaching this step")
	hangInEval        = flag.Bool("hang-in-eval", false, "hang in the evaluation at --hang-at-step instead")
	hangMarker        = flag.String("hang-marker", "", "hang only if this file is missing, and create it")
	ignoreSigterm     = flag.Bool("ignore-sigterm", false, "ignore SIGTERM")
	spawnChild        = flag.Bool("spawn-child", false, "start a grandchild `sleep 300` in the process group")
	garbage           = flag.Bool("garbage", false, "print garbage, a huge line and a flood of lines first")
	oddText           = flag.Bool("odd-text", false, "print long multibyte lines, NULs and invalid UTF-8 first")
	printEnv          = flag.Bool("print-env", false, "print the environment, a variable a line")
	logLines          = flag.Int("log-lines", 0, "log this many lines before training")
	exitCode          = flag.Int("exit-code", -1, "exit with this code after the first progress line")
	noFinalCheckpoint = flag.Bool("no-final-checkpoint", false, "skip the checkpoint at the end (a protocol violation)")
	slowStop          = flag.Duration("slow-stop", 0, "on SIGTERM, take this long before the last checkpoint")
)

// config is config.json, as far as this trainer needs it. modelPath is not
// read: the builtin trainer needs no weights.
type config struct {
	Protocol        int     `json:"protocol"`
	BaseModel       string  `json:"baseModel"`
	TrainingFile    string  `json:"trainingFile"`
	ValidationFile  *string `json:"validationFile"`
	Hyperparameters struct {
		Epochs       int     `json:"epochs"`
		LearningRate float64 `json:"learningRate"`
		BatchSize    int     `json:"batchSize"`
		WarmupSteps  int     `json:"warmupSteps"`
		QLoRA        bool    `json:"qlora"`
		LoRARank     int     `json:"loraRank"`
	} `json:"hyperparameters"`
	Seed   int64 `json:"seed"`
	Epochs struct {
		From int `json:"from"`
		To   int `json:"to"`
	} `json:"epochs"`
	ResumeFrom    *string `json:"resumeFrom"`
	CheckpointDir string  `json:"checkpointDir"`
	OutputDir     string  `json:"outputDir"`
	// Protocol 1.1: a dpo job trains as a supervised one here, the
	// preferred output its label, and reports made-up DPO metrics.
	Method struct {
		Type string `json:"type"`
		DPO  *struct {
			Beta float64 `json:"beta"`
		} `json:"dpo"`
	} `json:"method"`
	InitAdapter *string `json:"initAdapter"`
}

// emit writes one message line: {"type":typ,k1:v1,k2:v2,...}, keys in the
// order given. Each line is a single write to unbuffered stdout, so it is
// flushed at once. A value JSON cannot encode (a NaN loss) becomes null.
func emit(typ string, kv ...any) {
	b := append([]byte(`{"type":`), encode(typ)...)
	for i := 0; i+1 < len(kv); i += 2 {
		b = append(b, ',')
		b = append(b, encode(kv[i])...)
		b = append(b, ':')
		b = append(b, encode(kv[i+1])...)
	}
	os.Stdout.Write(append(b, "}\n"...))
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		return []byte("null")
	}
	return b
}

func logf(level, format string, args ...any) {
	emit("log", "level", level, "message", fmt.Sprintf(format, args...))
}

// fail reports data or a configuration that cannot be trained: an error log
// line (the job's error) and exit 2.
func fail(format string, args ...any) {
	logf("error", format, args...)
	os.Exit(2)
}

func main() {
	flag.Parse()

	// A SIGTERM cancels ctx; TrainEpoch checks it before every step, so
	// training stops at the next step boundary with a consistent state.
	ctx := context.Background()
	if *ignoreSigterm {
		signal.Ignore(syscall.SIGTERM)
	} else {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, syscall.SIGTERM)
		defer stop()
	}

	cfg := readConfig()
	if *spawnChild {
		// Same process group as ours (exec's default), never waited for.
		child := exec.Command("sleep", "300")
		if err := child.Start(); err != nil {
			fail("spawn child: %v", err)
		}
		logf("info", "child pid %d", child.Process.Pid)
	}
	if *garbage {
		printGarbage()
	}
	if *oddText {
		printOddText()
	}
	if *printEnv {
		env := os.Environ()
		slices.Sort(env)
		for _, kv := range env {
			fmt.Println(kv)
		}
	}
	for i := range *logLines {
		logf("info", "flood %d", i)
	}

	if cfg.InitAdapter != nil {
		if _, err := os.Stat(filepath.Join(*cfg.InitAdapter, "adapter_config.json")); err != nil {
			fail("initAdapter: %v", err)
		}
		logf("info", "starting from the adapter in %s", *cfg.InitAdapter)
	}
	dpo := cfg.Method.Type == "dpo"
	if dpo {
		logf("info", "method dpo, beta %g, qlora %v, lora rank %d", cfg.Method.DPO.Beta, cfg.Hyperparameters.QLoRA, cfg.Hyperparameters.LoRARank)
	}

	train := load(cfg.TrainingFile)
	var valid []trainer.Example
	if cfg.ValidationFile != nil {
		valid = load(*cfg.ValidationFile)
	}
	var state *trainer.State
	if cfg.ResumeFrom != nil {
		state = new(trainer.State)
		b, err := os.ReadFile(filepath.Join(*cfg.ResumeFrom, "state.bin"))
		if err == nil {
			err = state.UnmarshalBinary(b)
		}
		if err != nil {
			fail("read checkpoint %s: %v", *cfg.ResumeFrom, err)
		}
		if state.EpochStep > 0 {
			logf("info", "resumed from step %d, %d batches into epoch %d", state.Step, state.EpochStep, state.Epoch+1)
		} else {
			logf("info", "resumed from step %d, at the end of epoch %d", state.Step, state.Epoch)
		}
	} else {
		var err error
		if state, err = trainer.NewState(train, cfg.Seed); err != nil {
			fail("training file: %v", err)
		}
	}
	hp := trainer.Hyperparameters{
		Epochs:       cfg.Hyperparameters.Epochs,
		LearningRate: cfg.Hyperparameters.LearningRate,
		BatchSize:    cfg.Hyperparameters.BatchSize,
		WarmupSteps:  cfg.Hyperparameters.WarmupSteps,
	}
	run, err := trainer.NewRun(state, hp, train, valid)
	if err != nil {
		fail("%v", err)
	}
	run.OnEvaluate = func(done, total int) {
		emit("evaluating", "step", state.Step, "done", done, "total", total)
		if *hangInEval && state.Step == *hangAtStep && firstTime(*hangMarker) {
			hang(state.Step)
		}
	}
	if cfg.Epochs.From < 1 || cfg.Epochs.To < cfg.Epochs.From || cfg.Epochs.To > hp.Epochs {
		fail("epochs %d..%d are not within 1..%d", cfg.Epochs.From, cfg.Epochs.To, hp.Epochs)
	}

	startStep := state.Step
	saved, evaluated := -1, -1 // the steps last checkpointed and evaluated
	checkpoint := func() {
		// An announced directory belongs to the worker: never write it twice.
		if saved == state.Step {
			return
		}
		saved = state.Step
		writeCheckpoint(cfg.CheckpointDir, state)
	}
	onStep := func(s trainer.StepInfo) error {
		progress := []any{"step", s.Step, "epoch", s.Epoch, "loss", s.BatchLoss, "learningRate", s.LearningRate, "tokens", s.Tokens}
		if dpo {
			progress = append(progress, "metrics", map[string]float64{"rewardMargin": 1 / float64(s.Step), "rewardAccuracy": 0.5})
		}
		emit("progress", progress...)
		if *exitCode >= 0 {
			logf("error", "failing on request with exit %d", *exitCode)
			os.Exit(*exitCode)
		}
		if s.Step == *crashAtStep && firstTime(*crashMarker) {
			fmt.Fprintf(os.Stderr, "crashing at step %d on request\n", s.Step)
			os.Exit(1)
		}
		if !*hangInEval && s.Step == *hangAtStep && firstTime(*hangMarker) {
			hang(s.Step)
		}
		if *evalEvery > 0 && s.Step%*evalEvery == 0 {
			if loss, ok := run.ValidationLoss(); ok {
				emit("eval", "step", s.Step, "validationLoss", loss)
				evaluated = s.Step
			}
		}
		if *checkpointEvery > 0 && s.Step%*checkpointEvery == 0 {
			checkpoint()
		}
		if *stepDelay > 0 {
			select {
			case <-ctx.Done(): // stop now rather than after the delay
			case <-time.After(*stepDelay):
			}
		}
		return nil
	}

	var res trainer.EpochResult
	for epoch := cfg.Epochs.From; epoch <= cfg.Epochs.To; epoch++ {
		res, err = run.TrainEpoch(ctx, epoch, onStep)
		if err != nil && ctx.Err() != nil {
			// Stopped: a last checkpoint if this process trained anything.
			if state.Step > startStep {
				time.Sleep(*slowStop)
				checkpoint()
			}
			logf("info", "stopped by SIGTERM at step %d", state.Step)
			os.Exit(143)
		}
		if err != nil {
			fail("%v", err)
		}
		if res.ValidationLoss != nil && evaluated != state.Step {
			emit("eval", "step", state.Step, "validationLoss", *res.ValidationLoss,
				"metrics", map[string]float64{"validationAccuracy": *res.ValidationAccuracy})
			evaluated = state.Step
		}
		logf("info", "epoch %d done at step %d: training loss %.4f, accuracy %.3f",
			epoch, state.Step, res.TrainingLoss, res.TrainingAccuracy)
	}
	// The next epoch's process resumes from this checkpoint.
	if !*noFinalCheckpoint {
		checkpoint()
	}
	out := writeOutput(cfg, state)
	// res.TrainingLoss is Run.TrainingLoss() at the end of the last epoch.
	emit("result", "step", state.Step, "trainingLoss", res.TrainingLoss,
		"validationLoss", res.ValidationLoss, "tokens", state.Tokens, "outputPath", out)
}

func readConfig() config {
	path := os.Getenv("TUNEFORGE_TRAINER_CONFIG")
	if path == "" {
		fail("TUNEFORGE_TRAINER_CONFIG is not set")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		fail("read config: %v", err)
	}
	var cfg config
	if err := json.Unmarshal(b, &cfg); err != nil {
		fail("parse config %s: %v", path, err)
	}
	if cfg.Protocol != 1 {
		fail("trainer protocol %d is not supported; this trainer speaks protocol 1", cfg.Protocol)
	}
	return cfg
}

// load reads a JSONL dataset into the builtin trainer's examples, as the
// builtin worker does (activities.toTrainerExample).
func load(path string) []trainer.Example {
	f, err := os.Open(path)
	if err != nil {
		fail("open %s: %v", path, err)
	}
	defer f.Close()
	var out []trainer.Example
	_, err = dataset.Scan(context.Background(), f, dataset.Options{MinExamples: 1}, func(e dataset.Example) error {
		out = append(out, trainer.Example{Text: e.Input(), Label: e.Target(), Tokens: e.Tokens()})
		return nil
	})
	if err != nil {
		fail("%s: %v", filepath.Base(path), err)
	}
	return out
}

// writeCheckpoint saves the state into checkpointDir/step-N and announces
// it. The directory is the worker's from then on.
func writeCheckpoint(checkpointDir string, s *trainer.State) {
	// The epoch the last step belongs to; EpochStep is 0 at an epoch's end.
	epoch := s.Epoch
	if s.EpochStep > 0 {
		epoch++
	}
	dir := filepath.Join(checkpointDir, fmt.Sprintf("step-%d", s.Step))
	meta := encode(map[string]any{"step": s.Step, "epoch": epoch, "epochStep": s.EpochStep, "tokens": s.Tokens})
	b, err := s.MarshalBinary()
	if err == nil {
		err = os.MkdirAll(dir, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "state.bin"), b, 0o644)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, "meta.json"), append(meta, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "write checkpoint:", err)
		os.Exit(1) // a crash: retried from the previous checkpoint
	}
	emit("checkpoint", "step", s.Step, "epoch", epoch, "path", dir)
}

// writeOutput saves the trained model as outputDir/adapter and returns it.
func writeOutput(cfg config, s *trainer.State) string {
	out := filepath.Join(cfg.OutputDir, "adapter")
	b, err := s.MarshalBinary()
	if err == nil {
		err = os.MkdirAll(out, 0o755)
	}
	if err == nil {
		err = os.WriteFile(filepath.Join(out, "model.bin"), b, 0o644)
	}
	if err == nil {
		meta := encode(map[string]string{"base_model_name_or_path": cfg.BaseModel, "peft_type": "TEST"})
		err = os.WriteFile(filepath.Join(out, "adapter_config.json"), append(meta, '\n'), 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "write output:", err)
		os.Exit(1)
	}
	return out
}

// firstTime says whether a misbehaviour with this marker happens now:
// always without a marker, else only while the marker is missing, creating
// it so the retry succeeds.
func firstTime(marker string) bool {
	if marker == "" {
		return true
	}
	if _, err := os.Stat(marker); err == nil {
		return false
	}
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "create marker:", err)
	}
	return true
}

// hang stops reporting for ever, as a trainer stuck in a collective or a
// driver call does: it takes no further step and heeds no SIGTERM.
func hang(step int) {
	fmt.Fprintf(os.Stderr, "hanging at step %d on request\n", step)
	for {
		time.Sleep(time.Hour)
	}
}

// printGarbage prints what a careless trainer might: lines that are not
// messages, a message with a mistyped field, a line far beyond the 64 KiB
// cut, stderr chatter, and a flood that the worker's log rate limit must
// absorb.
func printGarbage() {
	fmt.Println("this is not json")
	fmt.Println(`{"type":"telemetry","gpu":0.9}`)
	fmt.Println(strings.Repeat("x", 1<<20))
	fmt.Println(`{"type":"progress","step":"one","epoch":1,"loss":1}`)
	for i := range 3 {
		fmt.Fprintf(os.Stderr, "a warning on stderr (%d of 3)\n", i+1)
	}
	w := bufio.NewWriterSize(os.Stdout, 64<<10) // as fast as possible
	for i := range 50000 {
		fmt.Fprintf(w, "flood %d\n", i)
	}
	if err := w.Flush(); err != nil {
		fmt.Fprintln(os.Stderr, "flood:", err)
	}
}

// oddLine is the 2,001-byte line of three-byte characters --odd-text
// prints: cut at 1,024 (or any count not a multiple of three) bytes, it
// ends inside a character.
var oddLine = strings.Repeat("€", 667)

// printOddText prints what PostgreSQL's text columns refuse, as a trainer
// printing a tokenizer's raw bytes might: long lines of multibyte
// characters, NULs raw and escaped in a log message, and bytes that are
// not UTF-8, on stdout and stderr. Its last stderr line is the long one,
// so a crash right after explains itself with a cut of it.
func printOddText() {
	fmt.Println(oddLine)
	fmt.Println("a NUL\x00 in a raw line")
	emit("log", "level", "warn", "message", "a NUL\x00 in a log message")
	fmt.Println("latin-1 caf\xe9 and a lone \xff byte")
	os.Stdout.Write([]byte(`{"type":"log","level":"info","message":"escaped \u0000 NUL and \ud800 surrogate"}` + "\n"))
	fmt.Fprintln(os.Stderr, "stderr: a NUL\x00 and a stray \xfe byte")
	fmt.Fprintln(os.Stderr, oddLine)
}
