package trainer

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// checkpointMagic opens every encoded State; the byte after it is the
// format version, so a future layout can be told apart from this one.
const (
	checkpointMagic   = "TFBT"
	checkpointVersion = 1
)

// maxCheckpointBody bounds decompression so a crafted blob cannot expand
// without limit.
const maxCheckpointBody = 1 << 30

// MarshalBinary encodes the state as magic, version, then a gzip stream.
// Only feature rows with a non-zero weight or moment are written: a row that
// was never touched is all zeros and is restored as such, so the encoding
// is exact while a checkpoint scales with the vocabulary seen, not with Dims.
// gzip's CRC-32 lets UnmarshalBinary detect corruption.
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
	if len(b) < len(checkpointMagic)+1 || string(b[:len(checkpointMagic)]) != checkpointMagic {
		return fmt.Errorf("%w: missing header", errCorrupt)
	}
	if v := b[len(checkpointMagic)]; v != checkpointVersion {
		return fmt.Errorf("%w: unsupported version %d", errCorrupt, v)
	}
	zr, err := gzip.NewReader(bytes.NewReader(b[len(checkpointMagic)+1:]))
	if err != nil {
		return fmt.Errorf("%w: %v", errCorrupt, err)
	}
	// Reading to EOF verifies the gzip checksum before any field is trusted.
	body, err := io.ReadAll(io.LimitReader(zr, maxCheckpointBody+1))
	if err != nil {
		return fmt.Errorf("%w: %v", errCorrupt, err)
	}
	if len(body) > maxCheckpointBody {
		return fmt.Errorf("%w: body too large", errCorrupt)
	}
	d := decoder{b: body}
	dims, L := int(d.u32()), int(d.u32())
	if d.err == nil && (dims < 1 || dims > maxDims || L < 2 || L > MaxLabels) {
		return fmt.Errorf("%w: %d dims x %d labels out of range", errCorrupt, dims, L)
	}
	labels := make([]string, 0, L)
	for range L {
		labels = append(labels, d.str())
	}
	if d.err != nil {
		return d.err
	}
	ns := newZeroState(labels, dims, d.i64())
	ns.Step = int(d.i64())
	ns.Epoch = int(d.i64())
	ns.EpochStep = int(d.i64())
	ns.Tokens = d.i64()
	d.f32s(ns.Bias)
	d.f32s(ns.BiasM)
	d.f32s(ns.BiasV)
	prev := -1
	for range d.u32() {
		j := int(d.u32())
		if d.err != nil {
			break
		}
		if j <= prev || j >= dims {
			return fmt.Errorf("%w: feature row %d out of order or range", errCorrupt, j)
		}
		prev = j
		d.f32s(ns.W[j*L : j*L+L])
		d.f32s(ns.M[j*L : j*L+L])
		d.f32s(ns.V[j*L : j*L+L])
	}
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(d.b))
	}
	if err := ns.validate(); err != nil {
		return fmt.Errorf("%w: %v", errCorrupt, err)
	}
	*s = *ns
	return nil
}

// decoder reads little-endian fields, latching the first short read so the
// caller checks once instead of after every field.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || n > len(d.b) {
		if d.err == nil {
			d.err = fmt.Errorf("%w: truncated", errCorrupt)
		}
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
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
	n, k := binary.Uvarint(d.b)
	if d.err == nil && (k <= 0 || n > uint64(len(d.b)-k)) {
		d.err = fmt.Errorf("%w: bad label", errCorrupt)
	}
	if d.err != nil {
		return ""
	}
	d.b = d.b[k:]
	return string(d.take(int(n)))
}

func (d *decoder) f32s(dst []float32) {
	v := d.take(4 * len(dst))
	for i := range dst {
		if v == nil {
			return
		}
		dst[i] = math.Float32frombits(binary.LittleEndian.Uint32(v[4*i:]))
	}
}
