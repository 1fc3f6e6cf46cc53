// Package memory estimates the peak GPU memory of one process of a
// trainers/hf training job: the frozen base weights (bf16, or 4-bit NF4
// with QLoRA, sharded by FSDP across the job's GPUs), the LoRA adapter with
// its gradients and AdamW state, the activations the backward pass keeps at
// the micro-batch's sequence length, the largest short-lived buffers (the
// loss's logits, a layer's recomputation and gradients), and a framework
// overhead. Each term counts the tensors train.py's code path creates;
// docs/memory-model.md says where each number comes from, and the tests
// check the estimate against the peak measured when train.py trains the
// tiny stand-in models on the CPU.
package memory

import "fmt"

// Architecture is the shape of a decoder-only transformer of the Llama
// family (Llama 3.1, Mistral): pre-norm RMSNorm layers of grouped-query
// attention and a gated (SwiGLU) MLP, untied input and output embeddings,
// no biases.
type Architecture struct {
	Layers       int `json:"layers"`
	Hidden       int `json:"hidden"`
	Intermediate int `json:"intermediate"`
	Heads        int `json:"heads"`
	KVHeads      int `json:"kvHeads"`
	HeadDim      int `json:"headDim"`
	Vocab        int `json:"vocab"`
}

// Validate says what is wrong with a, if anything.
func (a Architecture) Validate() error {
	for _, f := range []struct {
		name string
		v    int
	}{{"layers", a.Layers}, {"hidden", a.Hidden}, {"intermediate", a.Intermediate}, {"heads", a.Heads},
		{"kvHeads", a.KVHeads}, {"headDim", a.HeadDim}, {"vocab", a.Vocab}} {
		if f.v < 1 {
			return fmt.Errorf("memory: architecture %s must be at least 1, got %d", f.name, f.v)
		}
	}
	if a.Heads%a.KVHeads != 0 {
		return fmt.Errorf("memory: %d attention heads do not divide into %d key/value heads", a.Heads, a.KVHeads)
	}
	return nil
}

func (a Architecture) qDim() int64  { return int64(a.Heads * a.HeadDim) }
func (a Architecture) kvDim() int64 { return int64(a.KVHeads * a.HeadDim) }

// linearParameters is one layer's projections: q, k, v, o and the MLP's
// gate, up and down: the weights QLoRA quantizes and LoRA adapts.
func (a Architecture) linearParameters() int64 {
	h, i := int64(a.Hidden), int64(a.Intermediate)
	return h*a.qDim() + 2*h*a.kvDim() + a.qDim()*h + 3*h*i
}

// largestLinear is the largest projection's weight, in parameters.
func (a Architecture) largestLinear() int64 {
	return max(int64(a.Hidden)*int64(a.Intermediate), int64(a.Hidden)*a.qDim())
}

// otherParameters is what QLoRA leaves unquantized: the embeddings, the
// output head and the norms.
func (a Architecture) otherParameters() int64 {
	h := int64(a.Hidden)
	return 2*int64(a.Vocab)*h + int64(2*a.Layers+1)*h
}

// Parameters is the model's parameter count.
func (a Architecture) Parameters() int64 {
	return int64(a.Layers)*a.linearParameters() + a.otherParameters()
}

// LoRAParameters is the adapter's parameter count at rank r on every
// projection, as train.py puts it (q k v o gate up down): r × (in + out)
// each.
func (a Architecture) LoRAParameters(r int) int64 {
	h, i, q, kv := int64(a.Hidden), int64(a.Intermediate), a.qDim(), a.kvDim()
	perLayer := (h + q) + 2*(h+kv) + (q + h) + 2*(h+i) + (i + h)
	return int64(a.Layers) * int64(r) * perLayer
}

// Device is where train.py runs, which decides its precisions.
type Device string

const (
	// GPU: a CUDA GPU with native bf16 (every catalog pool's): bf16
	// weights, bf16 autocast, the adapter in float32.
	GPU Device = "gpu"
	// CPU: everything in float32; what the tests measure.
	CPU Device = "cpu"
)

// Job is what one trainer process trains and how.
type Job struct {
	Architecture
	Device Device
	// GPUs is the job's processes, one a GPU, sharding the base weights and
	// the adapter with FSDP; 1 shards nothing.
	GPUs int
	// QLoRA holds the projections' weights in 4-bit NF4.
	QLoRA bool
	// DPO trains on preference pairs: each example is two sequences, both
	// forward passes kept for one backward pass, and LoRA dropout is off.
	DPO bool
	// LoRARank is the adapter's rank r.
	LoRARank int
	// Examples is how many examples a forward pass (a micro-batch) takes.
	Examples int
	// SequenceLength is the tokens of each of the micro-batch's sequences:
	// the longest, to which the others are padded.
	SequenceLength int
	// GradientCheckpointing keeps only each layer's input for the backward
	// pass and recomputes the rest, one layer at a time.
	GradientCheckpointing bool
}

// Least is the job as train.py runs it at its least memory: one example a
// forward pass, with gradient checkpointing. A step that runs out of memory
// is retried with smaller micro-batches down to one example, then with
// gradient checkpointing, and only then fails (exit 3), so a job whose
// Least estimate exceeds its GPU can never run, whatever its batchSize.
func (j Job) Least() Job {
	j.Examples, j.GradientCheckpointing = 1, true
	return j
}

// Constants of train.py and the libraries it uses; docs/memory-model.md
// says where each comes from.
const (
	// lossChunk is train.py's LOSS_CHUNK: labelled positions whose logits
	// exist at once.
	lossChunk = 4096
	// nf4BytesPerParameter is bitsandbytes' NF4 with double quantization
	// (quant.py): 4-bit codes, an 8-bit absmax a block of 64, and a float32
	// absmax of those a block of 256 blocks.
	nf4BytesPerParameter = 0.5 + 1.0/64 + 4.0/(64*256)
	// adapterBytesPerParameter: the adapter's float32 weight, its gradient
	// and AdamW's two moments.
	adapterBytesPerParameter = 4 + 4 + 8
	// cudaOverhead is what a CUDA process holds beside its tensors: the
	// context and loaded kernels, cuBLAS and cuDNN workspaces, NCCL's
	// buffers between GPUs.
	cudaOverhead = 1 << 30
	// fragmentation is the share of its tensors' bytes that PyTorch's
	// caching allocator holds beyond them (blocks split and cached).
	fragmentation = 0.05
)

// Estimate is a job's peak memory on one GPU, in bytes, by what holds it.
type Estimate struct {
	// Weights is the frozen base model's weights this GPU holds: its FSDP
	// shard.
	Weights int64 `json:"weights"`
	// Gathered is, with FSDP, the weights gathered whole for the layers
	// being computed: the embeddings, and three decoder layers' worth (the
	// one computed, the next one prefetched and its all-gather buffer).
	Gathered int64 `json:"gathered"`
	// Adapter is the LoRA adapter's weights, gradients and AdamW moments,
	// all float32 (their FSDP shard).
	Adapter int64 `json:"adapter"`
	// Activations is what the forward pass keeps for the backward pass, at
	// its end: every layer's saved tensors (each layer's input only, with
	// gradient checkpointing) and what the loss keeps.
	Activations int64 `json:"activations"`
	// Transient is the largest set of short-lived buffers on top of the
	// activations: the loss's logits for one chunk in the backward pass,
	// or a layer's recomputed activations and gradients (with a
	// dequantized 4-bit weight).
	Transient int64 `json:"transient"`
	// Overhead is the CUDA context, libraries' workspaces and the
	// allocator's fragmentation; 0 on the CPU.
	Overhead int64 `json:"overhead"`
	// Tensors is the bytes of tensors alive at the peak: all but Overhead.
	Tensors int64 `json:"tensors"`
	// Total is the peak: what the GPU must have.
	Total int64 `json:"total"`
}

// precision is the bytes an element of each kind of tensor takes.
type precision struct {
	// linear and other: a projection's weight, and any other base weight.
	linear, other float64
	// stream: the residual stream and the MLP's element-wise products:
	// bf16 under autocast, but float32 with QLoRA, whose norms quant.py
	// keeps in float32 (their float32 weight makes their output float32)
	// and whose 4-bit layers return their input's dtype.
	stream int64
	// matmul: an input a matrix product or attention saves, autocast's
	// bf16 copy on a GPU.
	matmul int64
	// mask: LoRA dropout's saved mask per element: CUDA's fused dropout
	// keeps a bool, the CPU's a float32 scale; none without dropout (DPO).
	mask int64
	// dequant: a 4-bit weight dequantized for its product (bf16).
	dequant int64
	// adapterCast: autocast's bf16 copy of each adapter weight, cached for
	// the forward pass and kept for the backward pass (FSDP gathers the
	// adapter in bf16 instead).
	adapterCast int64
	// overhead: whether the CUDA overhead applies.
	overhead bool
}

func (j Job) precision() precision {
	p := precision{linear: 2, other: 2, stream: 2, matmul: 2, mask: 1, overhead: true}
	if j.GPUs == 1 {
		p.adapterCast = 2
	}
	if j.Device == CPU {
		p = precision{linear: 4, other: 4, stream: 4, matmul: 4, mask: 4}
	}
	if j.QLoRA {
		// The embeddings and head stay in the dtype they load in (quant.py).
		p.linear, p.stream, p.dequant = nf4BytesPerParameter, 4, 2
	}
	if j.DPO {
		p.mask = 0
	}
	return p
}

// Validate says what is wrong with j, if anything.
func (j Job) Validate() error {
	if err := j.Architecture.Validate(); err != nil {
		return err
	}
	switch {
	case j.Device != GPU && j.Device != CPU:
		return fmt.Errorf("memory: unknown device %q", j.Device)
	case j.GPUs < 1:
		return fmt.Errorf("memory: GPUs must be at least 1, got %d", j.GPUs)
	case j.QLoRA && j.GPUs > 1:
		// bitsandbytes' 4-bit weights do not shard with FSDP2 (distributed.py).
		return fmt.Errorf("memory: QLoRA trains on one GPU, not %d", j.GPUs)
	case j.LoRARank < 1:
		return fmt.Errorf("memory: LoRA rank must be at least 1, got %d", j.LoRARank)
	case j.Examples < 1:
		return fmt.Errorf("memory: examples a micro-batch must be at least 1, got %d", j.Examples)
	case j.SequenceLength < 2:
		return fmt.Errorf("memory: sequence length must be at least 2, got %d", j.SequenceLength)
	}
	return nil
}

// Estimate is j's peak memory on each of its GPUs. j must be valid (see
// Validate).
func (j Job) Estimate() Estimate {
	a, p := j.Architecture, j.precision()
	n := int64(j.GPUs)
	layers := int64(a.Layers)
	h, inter, vocab := int64(a.Hidden), int64(a.Intermediate), int64(a.Vocab)

	var e Estimate
	// FSDP (distributed.py) shards each decoder layer and the decoder's
	// root (the embeddings) across the GPUs; the output head, frozen and
	// called outside the decoder, stays whole on every GPU.
	head := float64(vocab*h) * p.other
	sharded := float64(layers*a.linearParameters())*p.linear + float64(a.otherParameters())*p.other - head
	e.Weights = int64(sharded/float64(n) + head)
	lora := a.LoRAParameters(j.LoRARank)
	if n > 1 {
		// Gathered in the compute dtype (FSDP's param_dtype): the root's
		// embeddings for the whole step (FSDP keeps the root unsharded after
		// its forward), and three layers' worth with their adapters: the
		// layer computed, and the next one prefetched, whose all-gather
		// output is copied into its parameters before it is freed.
		perLayer := a.linearParameters() + 2*h + lora/layers
		e.Gathered = (vocab*h + 3*perLayer) * p.matmul
	}
	e.Adapter = lora * adapterBytesPerParameter / n

	// A forward pass's tokens; DPO makes two passes (the preferred outputs,
	// then the others) and keeps both for one backward pass.
	length := int64(j.SequenceLength)
	tokens := int64(j.Examples) * length
	passes := int64(1)
	if j.DPO {
		passes = 2
	}
	perLayer := j.layerActivations(p)
	// Kept outside the layers, per token: the final norm's float32 input,
	// the hidden states gathered at the labelled positions for the loss,
	// and the rotary embedding's cos and sin.
	outer := 4*h + p.stream*h + 2*int64(a.HeadDim)*p.stream
	saved := layers * perLayer
	if j.GradientCheckpointing {
		saved = layers * h * p.stream
	}
	e.Activations = passes * (tokens*(saved+outer) + p.adapterCast*lora)
	if j.Examples > 1 {
		// Padding in the micro-batch: the attention mask, a bool per
		// query and key of each example.
		e.Activations += passes * int64(j.Examples) * length * length
	}

	// The loss of one chunk of labelled positions, in its backward pass:
	// the log-softmax's float32 output, its gradient and the gradient of
	// its input, vocabulary-wide. A supervised micro-batch's positions are
	// chunked together; DPO computes each sequence's apart.
	chunk := min(lossChunk, tokens)
	if j.DPO {
		chunk = min(lossChunk, length)
	}
	loss := 3 * 4 * chunk * vocab
	// A layer's backward pass, one forward pass's at a time: its
	// activations recomputed (with gradient checkpointing), the gradients
	// in flight (the residual stream's and the MLP's, twice each), and a
	// 4-bit weight dequantized.
	layer := tokens*(2*h+2*inter)*p.stream + int64(float64(a.largestLinear())*float64(p.dequant))
	if j.GradientCheckpointing {
		layer += tokens * perLayer
	}
	e.Transient = max(loss, layer)

	e.Tensors = e.Weights + e.Gathered + e.Adapter + e.Activations + e.Transient
	if p.overhead {
		e.Overhead = cudaOverhead + int64(fragmentation*float64(e.Tensors))
	}
	e.Total = e.Tensors + e.Overhead
	return e
}

// layerActivations is the bytes one decoder layer keeps for the backward
// pass per token of the forward pass.
func (j Job) layerActivations(p precision) int64 {
	a := j.Architecture
	h, inter, q, kv, r := int64(a.Hidden), int64(a.Intermediate), a.qDim(), a.kvDim(), int64(j.LoRARank)
	// Two RMSNorms: each keeps its input in float32 and the inverse RMS.
	norms := 2*4*h + 2*4
	// Each LoRA projection keeps its dropped-out input (for A's gradient),
	// dropout's mask, and A's output (for B's gradient). The inputs are
	// the normed hidden state (q, k, v; gate, up), the attention's output
	// (o) and the MLP's product (down).
	loraIn := (5*h + q + inter) * (p.mask + p.matmul)
	loraMid := 7 * r * p.matmul
	// Attention (SDPA's flash or memory-efficient kernel) keeps q, k, v and
	// its output, and a float32 log-sum-exp a head. With padding (several
	// examples a micro-batch) transformers passes a mask and repeats k and v
	// to every head.
	kvKept := kv
	if j.Examples > 1 {
		kvKept = q
	}
	attention := (2*q+2*kvKept)*p.matmul + 4*int64(a.Heads)
	// The MLP keeps the gate's output (SiLU's input), SiLU's output and the
	// up projection's output (the product's factors).
	mlp := 3 * inter * p.stream
	return norms + loraIn + loraMid + attention + mlp
}

// GiB is a byte count in GiB, for people.
func GiB(bytes int64) float64 { return float64(bytes) / (1 << 30) }

// Fits says whether an estimate fits a GPU of gpuMemoryGB: the catalog's
// GB are binary (an "80GB" A100 has 80 GiB).
func (e Estimate) Fits(gpuMemoryGB int) bool {
	return e.Total <= int64(gpuMemoryGB)<<30
}
