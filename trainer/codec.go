package trainer

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
)

// checkpointMagic opens every encoded State; the byte after it is the
// format version, so a future layout can be told apart from this one.
// Version 2 added the loss sum (State.LossSum, LossSteps); a version 1
// checkpoint decodes with none.
const (
	checkpointMagic   = "TFBT"
	checkpointVersion = 2
)

// maxCheckpointBody bounds decompression so a crafted blob cannot expand
// without limit.
const maxCheckpointBody = 1 << 30

// MarshalBinary encodes the state as magic, version, then a gzip stream.
// Only feature rows with a non-zero weight or moment are written: a row that
// was never touched is all zeros and is restored as such, so the encoding
// is exact while a checkpoint scales with the vocabulary seen, not with Dims.
// gzip's CRC-32 lets decoding detect corruption.
func (s *State) MarshalBinary() ([]byte, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	var body []byte
	u32 := func(v uint32) { body = binary.LittleEndian.AppendUint32(body, v) }
	i64 := func(v int64) { body = binary.LittleEndian.AppendUint64(body, uint64(v)) }
	f32s := func(v []float32) {
		for _, x := range v {
			u32(math.Float32bits(x))
		}
	}
	L := len(s.Labels)
	u32(uint32(s.Dims))
	u32(uint32(L))
	for _, l := range s.Labels {
		body = binary.AppendUvarint(body, uint64(len(l)))
		body = append(body, l...)
	}
	i64(s.Seed)
	i64(int64(s.Step))
	i64(int64(s.Epoch))
	i64(int64(s.EpochStep))
	i64(s.Tokens)
	i64(int64(math.Float64bits(s.LossSum)))
	i64(int64(s.LossSteps))
	f32s(s.Bias)
	f32s(s.BiasM)
	f32s(s.BiasV)
	var rows []uint32
	for j := range s.Dims {
		if !allZero(s.W[j*L:j*L+L]) || !allZero(s.M[j*L:j*L+L]) || !allZero(s.V[j*L:j*L+L]) {
			rows = append(rows, uint32(j))
		}
	}
	u32(uint32(len(rows)))
	for _, j := range rows {
		u32(j)
		f32s(s.W[int(j)*L : int(j)*L+L])
		f32s(s.M[int(j)*L : int(j)*L+L])
		f32s(s.V[int(j)*L : int(j)*L+L])
	}

	var out bytes.Buffer
	out.WriteString(checkpointMagic)
	out.WriteByte(checkpointVersion)
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(body); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// allZero reports whether every entry is +0 (bit pattern zero), so that a
// -0 weight still round-trips bit for bit.
func allZero(v []float32) bool {
	for _, x := range v {
		if math.Float32bits(x) != 0 {
			return false
		}
	}
	return true
}

// errCorrupt is returned for any blob that is not a well-formed checkpoint.
var errCorrupt = errors.New("trainer: corrupt checkpoint")

// UnmarshalBinary decodes a checkpoint written by MarshalBinary. It replaces
// s only when the whole blob decodes and validates, so a failed decode
// leaves s untouched.
func (s *State) UnmarshalBinary(b []byte) error {
	d, h, err := openCheckpoint(bytes.NewReader(b))
	if err != nil {
		return err
	}
	ns := newZeroState(h.labels, h.dims, h.seed)
	ns.Step, ns.Epoch, ns.EpochStep, ns.Tokens = h.step, h.epoch, h.epochStep, h.tokens
	ns.LossSum, ns.LossSteps = h.lossSum, h.lossSteps
	d.f32s(ns.Bias)
	d.f32s(ns.BiasM)
	d.f32s(ns.BiasV)
	L := len(h.labels)
	err = d.rows(h.dims, nil, func(j int) {
		d.f32s(ns.W[j*L : j*L+L])
		d.f32s(ns.M[j*L : j*L+L])
		d.f32s(ns.V[j*L : j*L+L])
	})
	if err != nil {
		return err
	}
	if err := ns.validate(); err != nil {
		return fmt.Errorf("%w: %v", errCorrupt, err)
	}
	*s = *ns
	return nil
}

// header is what an encoded State holds before its bias and feature rows.
type header struct {
	dims                   int
	labels                 []string // sorted and distinct
	seed                   int64
	step, epoch, epochStep int
	tokens                 int64
	lossSum                float64
	lossSteps              int
}

// openCheckpoint checks the magic and version, starts decompressing and
// decodes the header. The body is decoded as it streams, never buffered
// whole, so decoding needs little beyond what the caller keeps.
func openCheckpoint(r io.Reader) (*decoder, header, error) {
	var h header
	br := bufio.NewReader(r)
	lead := make([]byte, len(checkpointMagic)+1)
	if _, err := io.ReadFull(br, lead); err != nil || string(lead[:len(checkpointMagic)]) != checkpointMagic {
		return nil, h, fmt.Errorf("%w: missing header", errCorrupt)
	}
	version := lead[len(checkpointMagic)]
	if version < 1 || version > checkpointVersion {
		return nil, h, fmt.Errorf("%w: unsupported version %d", errCorrupt, version)
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		return nil, h, fmt.Errorf("%w: %v", errCorrupt, err)
	}
	d := &decoder{limit: &io.LimitedReader{R: zr, N: maxCheckpointBody + 1}}
	d.r = bufio.NewReader(d.limit)
	h.dims, h.labels = int(d.u32()), make([]string, 0, 2)
	L := int(d.u32())
	if d.err == nil && (h.dims < 1 || h.dims > maxDims || L < 2 || L > MaxLabels) {
		return nil, h, fmt.Errorf("%w: %d dims x %d labels out of range", errCorrupt, h.dims, L)
	}
	for range L {
		h.labels = append(h.labels, d.str())
	}
	h.seed = d.i64()
	h.step, h.epoch, h.epochStep = int(d.i64()), int(d.i64()), int(d.i64())
	h.tokens = d.i64()
	if version >= 2 {
		h.lossSum, h.lossSteps = math.Float64frombits(uint64(d.i64())), int(d.i64())
	}
	if d.err != nil {
		return nil, h, d.err
	}
	if !slices.IsSorted(h.labels) || len(slices.Compact(slices.Clone(h.labels))) != L {
		return nil, h, fmt.Errorf("%w: labels are not sorted and distinct", errCorrupt)
	}
	return d, h, nil
}

// decoder reads little-endian fields from a checkpoint's gzip stream,
// latching the first error so the caller checks once instead of after
// every field.
type decoder struct {
	r       *bufio.Reader
	limit   *io.LimitedReader // the decompressed body, cut past maxCheckpointBody
	err     error
	scratch []byte
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if cap(d.scratch) < n {
		d.scratch = make([]byte, n)
	}
	v := d.scratch[:n]
	if _, err := io.ReadFull(d.r, v); err != nil {
		d.fail(err)
		return nil
	}
	return v
}

// fail latches err as a corrupt checkpoint: a short body is truncated, and
// anything else the decompressor says (a bad checksum) is corruption too.
func (d *decoder) fail(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		d.err = fmt.Errorf("%w: truncated", errCorrupt)
		return
	}
	d.err = fmt.Errorf("%w: %v", errCorrupt, err)
}

func (d *decoder) u32() uint32 {
	if v := d.take(4); v != nil {
		return binary.LittleEndian.Uint32(v)
	}
	return 0
}

func (d *decoder) i64() int64 {
	if v := d.take(8); v != nil {
		return int64(binary.LittleEndian.Uint64(v))
	}
	return 0
}

func (d *decoder) str() string {
	if d.err != nil {
		return ""
	}
	n, err := binary.ReadUvarint(d.r)
	if err != nil || n > uint64(d.limit.N)+uint64(d.r.Buffered()) {
		d.err = fmt.Errorf("%w: bad label", errCorrupt)
		return ""
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(d.r, b); err != nil {
		d.fail(err)
		return ""
	}
	return string(b)
}

// f32s fills dst.
func (d *decoder) f32s(dst []float32) {
	v := d.take(4 * len(dst))
	for i := range dst {
		if v == nil {
			return
		}
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(v[4*i:]))
	}
}

// skip passes over n floats the caller does not keep.
func (d *decoder) skip(n int) {
	if d.err != nil {
		return
	}
	if _, err := d.r.Discard(4 * n); err != nil {
		d.fail(err)
	}
}

// rows decodes the feature rows: their count, passed to begin (if
// non-nil), then each row's index, which must ascend and stay below dims,
// followed by what row reads for that feature. It then checks the body ends
// there, which also verifies the gzip checksum, and returns the first error.
func (d *decoder) rows(dims int, begin func(n int), row func(j int)) error {
	n := d.u32()
	if d.err == nil && uint64(n) > uint64(dims) {
		return fmt.Errorf("%w: %d feature rows for %d dims", errCorrupt, n, dims)
	}
	if d.err == nil && begin != nil {
		begin(int(n))
	}
	prev := -1
	for range n {
		j := int(d.u32())
		if d.err != nil {
			return d.err
		}
		if j <= prev || j >= dims {
			return fmt.Errorf("%w: feature row %d out of order or range", errCorrupt, j)
		}
		prev = j
		row(j)
	}
	if d.err != nil {
		return d.err
	}
	trailing, err := io.Copy(io.Discard, d.r)
	switch {
	case err != nil:
		d.fail(err)
		return d.err
	case d.limit.N == 0:
		return fmt.Errorf("%w: body too large", errCorrupt)
	case trailing != 0:
		return fmt.Errorf("%w: %d trailing bytes", errCorrupt, trailing)
	}
	return nil
}
