// Package command runs an external trainer through tuneforge's trainer
// protocol, version 1.1 (docs/trainer-protocol.md): a config.json in, JSON
// lines out, checkpoint directories, exit codes that classify failure, and
// SIGTERM then SIGKILL to stop; one process, or one per GPU of which rank 0
// speaks. It knows nothing of Temporal or storage:
// the caller's Handler records what the trainer reports.
package command

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Protocol is the protocol's major version, config.json's protocol: a
// trainer that sees another exits 2.
const Protocol = 1

// ProtocolVersion is the full version this package speaks, config.json's
// protocolVersion. 1.1 added fields a version-1 trainer may ignore
// (worldSize among them) and the rank field of messages.
const ProtocolVersion = "1.1"

// ConfigEnv names the environment variable holding config.json's path.
const ConfigEnv = "TUNEFORGE_TRAINER_CONFIG"

// Config is config.json.
type Config struct {
	Protocol          int             `json:"protocol"`
	ProtocolVersion   string          `json:"protocolVersion"`
	JobID             string          `json:"jobId"`
	BaseModel         string          `json:"baseModel"`
	ModelPath         string          `json:"modelPath"`
	TrainingFile      string          `json:"trainingFile"`
	ValidationFile    *string         `json:"validationFile"`
	Hyperparameters   Hyperparameters `json:"hyperparameters"`
	MaxSequenceLength int             `json:"maxSequenceLength"`
	Seed              int64           `json:"seed"`
	Epochs            EpochRange      `json:"epochs"`
	ResumeFrom        *string         `json:"resumeFrom"`
	// Method is how to train (1.1; a version-1 trainer trains supervised).
	Method Method `json:"method"`
	// InitAdapter is a PEFT adapter directory to start training from
	// (1.1), nil to start from the base model alone.
	InitAdapter   *string `json:"initAdapter"`
	CheckpointDir string  `json:"checkpointDir"`
	OutputDir     string  `json:"outputDir"`
	// WorldSize is how many processes train the attempt, one per GPU
	// (1: one process). Run sets it from the Runner.
	WorldSize int `json:"worldSize"`
	// MemoryRetry (1.1) counts the attempts of this epoch before this one
	// that several processes ran out of GPU memory in: the trainer should
	// fit in less memory with each (0: the first try, and absent).
	MemoryRetry int `json:"memoryRetry,omitempty"`
}

// Hyperparameters are the job's training settings; Epochs is the job's total.
type Hyperparameters struct {
	Epochs       int     `json:"epochs"`
	LearningRate float64 `json:"learningRate"`
	BatchSize    int     `json:"batchSize"`
	WarmupSteps  int     `json:"warmupSteps"`
	// QLoRA (1.1) trains the LoRA adapters in bf16 on 4-bit (NF4) frozen
	// base weights.
	QLoRA bool `json:"qlora"`
	// LoRARank (1.1) is the LoRA adapter's rank; with initAdapter, that
	// adapter's. Absent: the trainer's own default.
	LoRARank int `json:"loraRank,omitempty"`
}

// The methods of Method.Type.
const (
	MethodSupervised = "supervised"
	MethodDPO        = "dpo"
)

// Method is how a trainer trains: {"type":"supervised"}, or
// {"type":"dpo","dpo":{"beta":0.1}} on preference data.
type Method struct {
	Type string     `json:"type"`
	DPO  *DPOConfig `json:"dpo,omitempty"`
}

// DPOConfig is the dpo method's settings.
type DPOConfig struct {
	// Beta weighs the penalty for moving away from the reference model.
	Beta float64 `json:"beta"`
}

// EpochRange is the epochs, 1-based and inclusive, one process trains.
type EpochRange struct {
	From int `json:"from"`
	To   int `json:"to"`
}

// Progress reports one optimizer step.
type Progress struct {
	Step         int     `json:"step"`
	Epoch        int     `json:"epoch"`
	Loss         float64 `json:"loss"`
	LearningRate float64 `json:"learningRate"`
	Tokens       int64   `json:"tokens"`
	// Metrics (1.1, optional) are the trainer's own figures at the step
	// by name, such as DPO's rewardMargin.
	Metrics map[string]float64 `json:"metrics,omitempty"`
}

// Eval reports a validation pass at a step.
type Eval struct {
	Step           int                `json:"step"`
	ValidationLoss float64            `json:"validationLoss"`
	Metrics        map[string]float64 `json:"metrics,omitempty"`
}

// EvalProgress reports how far a long evaluation has got, so that it is
// not taken for a hang. Every field is optional.
type EvalProgress struct {
	Step  int `json:"step"`  // the step being evaluated
	Done  int `json:"done"`  // examples (or batches) evaluated so far
	Total int `json:"total"` // of how many
}

// Checkpoint announces a checkpoint directory. Path is absolute once the
// runner has checked it lies under the attempt's checkpoint directory.
type Checkpoint struct {
	Step  int    `json:"step"`
	Epoch int    `json:"epoch"`
	Path  string `json:"path"`
}

// Result is an attempt's outcome. OutputPath is absolute once checked.
type Result struct {
	Step           int      `json:"step"`
	TrainingLoss   float64  `json:"trainingLoss"`
	ValidationLoss *float64 `json:"validationLoss"`
	Tokens         int64    `json:"tokens"`
	OutputPath     string   `json:"outputPath"`
}

// Log levels a trainer may use.
const (
	LevelInfo  = "info"
	LevelWarn  = "warn"
	LevelError = "error"
)

// message is any stdout line that parses as a known message. Fields are
// pointers so a missing required field is told apart from a zero.
type message struct {
	Type           string             `json:"type"`
	Step           *int               `json:"step"`
	Epoch          *int               `json:"epoch"`
	Loss           *float64           `json:"loss"`
	LearningRate   *float64           `json:"learningRate"`
	Tokens         *int64             `json:"tokens"`
	ValidationLoss *float64           `json:"validationLoss"`
	Metrics        map[string]float64 `json:"metrics"`
	Path           *string            `json:"path"`
	Level          string             `json:"level"`
	Message        *string            `json:"message"`
	TrainingLoss   *float64           `json:"trainingLoss"`
	OutputPath     *string            `json:"outputPath"`
	Done           *int               `json:"done"`
	Total          *int               `json:"total"`
}

// parsed is one stdout line, decoded: exactly one field is set, or none
// when the line is not a message (it is then logged as it is).
type parsed struct {
	progress   *Progress
	eval       *Eval
	evaluating *EvalProgress
	checkpoint *Checkpoint
	log        *logLine
	result     *Result
	// malformed explains why a line that looked like a message was not one.
	malformed string
}

type logLine struct {
	level, message string
}

// parseLine decodes a stdout line. Lines that are not JSON objects with a
// known type are not messages; known types with missing or mistyped fields
// are reported as malformed, so the trainer's author sees why.
func parseLine(line string) parsed {
	if !strings.HasPrefix(strings.TrimSpace(line), "{") {
		return parsed{}
	}
	var head struct {
		Type string `json:"type"`
		Rank *int   `json:"rank"`
	}
	if json.Unmarshal([]byte(line), &head) != nil {
		return parsed{}
	}
	if head.Rank != nil && *head.Rank != 0 {
		// Only rank 0 speaks for a multi-process trainer; another
		// rank's message is a log line.
		return parsed{}
	}
	switch head.Type {
	case "progress", "eval", "evaluating", "checkpoint", "log", "result":
	default:
		return parsed{}
	}
	var m message
	if err := json.Unmarshal([]byte(line), &m); err != nil {
		return parsed{malformed: fmt.Sprintf("malformed %s message (%v)", head.Type, err)}
	}
	missing := func(names ...string) parsed {
		return parsed{malformed: fmt.Sprintf("%s message lacks %s", m.Type, strings.Join(names, ", "))}
	}
	switch m.Type {
	case "progress":
		if m.Step == nil || m.Epoch == nil || m.Loss == nil {
			return missing("step, epoch or loss")
		}
		return parsed{progress: &Progress{Step: *m.Step, Epoch: *m.Epoch, Loss: *m.Loss, LearningRate: deref(m.LearningRate), Tokens: deref(m.Tokens), Metrics: m.Metrics}}
	case "eval":
		if m.Step == nil || m.ValidationLoss == nil {
			return missing("step or validationLoss")
		}
		return parsed{eval: &Eval{Step: *m.Step, ValidationLoss: *m.ValidationLoss, Metrics: m.Metrics}}
	case "evaluating":
		return parsed{evaluating: &EvalProgress{Step: deref(m.Step), Done: deref(m.Done), Total: deref(m.Total)}}
	case "checkpoint":
		if m.Step == nil || m.Path == nil {
			return missing("step or path")
		}
		return parsed{checkpoint: &Checkpoint{Step: *m.Step, Epoch: deref(m.Epoch), Path: *m.Path}}
	case "log":
		if m.Message == nil {
			return missing("message")
		}
		level := m.Level
		if level != LevelWarn && level != LevelError {
			level = LevelInfo
		}
		return parsed{log: &logLine{level: level, message: *m.Message}}
	default: // result
		if m.Step == nil || m.OutputPath == nil {
			return missing("step or outputPath")
		}
		return parsed{result: &Result{Step: *m.Step, TrainingLoss: deref(m.TrainingLoss), ValidationLoss: m.ValidationLoss, Tokens: deref(m.Tokens), OutputPath: *m.OutputPath}}
	}
}

func deref[T any](p *T) T {
	if p == nil {
		var zero T
		return zero
	}
	return *p
}

// Split splits a command line into words the way a POSIX shell does:
// blanks separate words, single quotes keep everything literal, double
// quotes keep blanks and honour \" \\ \$ and \`, and a backslash outside
// quotes escapes the next character. Nothing is expanded.
func Split(line string) ([]string, error) {
	var (
		words   []string
		cur     strings.Builder
		inWord  bool
		quote   byte
		escaped bool
	)
	// Byte by byte: every character that matters is ASCII, and bytes that
	// are not UTF-8 (a Latin-1 file name) pass through unchanged.
	for i := 0; i < len(line); i++ {
		r := line[i]
		switch {
		case escaped:
			if quote == '"' && !strings.ContainsRune(`"\$`+"`", rune(r)) {
				cur.WriteByte('\\')
			}
			cur.WriteByte(r)
			escaped = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteByte(r)
			}
		case r == '\\':
			escaped, inWord = true, true
		case quote == '"':
			if r == '"' {
				quote = 0
			} else {
				cur.WriteByte(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(r)
			inWord = true
		}
	}
	if escaped || quote != 0 {
		return nil, fmt.Errorf("command line %q has an unterminated quote or a trailing backslash", line)
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("the command line is empty")
	}
	return words, nil
}

// Join is Split's inverse: words as a command line, each quoted when it
// holds anything but letters, digits and -_./:=+,@%.
func Join(words ...string) string {
	quoted := make([]string, len(words))
	for i, w := range words {
		plain := w != ""
		for j := 0; j < len(w) && plain; j++ {
			c := w[j]
			plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_./:=+,@%", c) >= 0
		}
		if plain {
			quoted[i] = w
		} else {
			quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
		}
	}
	return strings.Join(quoted, " ")
}
