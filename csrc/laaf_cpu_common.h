// laaf_kernels: what the CPU sources (laaf_cpu.cpp, laaf_cpu_flexible.cpp) share:
// the (rows, cols) grid with its per-channel values, loading and storing T as
// lanes of its compute type, and deterministic folding of per-chunk partials.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <numeric>
#include <vector>

#include "laaf_layout.h"

namespace laaf {
namespace cpu {

using at::Tensor;
using at::vec::Vectorized;

constexpr int64_t kRowsPerChunk = 64;

// A 2-D (rows, cols) contiguous view of the data, and where the slopes run:
// one per column (linear layers, channels last) or one per row, the channel of
// row r being r % channels (channels in the middle, e.g. NCHW with dim = 1).
template <typename T>
struct Grid {
  int64_t rows, cols;
  const T* s;        // s = n * a, or nullptr
  int kind;          // SlopeKind
  bool on_rows;
  int64_t channels;  // for on_rows

  Vectorized<T> slope(int64_t r, int64_t c, int64_t n) const {
    using V = Vectorized<T>;
    if (kind == kNone) return V(T(1));
    if (kind == kScalar) return V(s[0]);
    if (on_rows) return V(s[r % channels]);
    return V::loadu(s + c, n);
  }
};

// A FLAT walk over a channels-last grid (not on_rows) in full vectors: vector v
// covers flat indices [L v, L v + L) of the (rows, cols) buffer (L lanes),
// whatever the row boundaries, so that narrow layers (cols = 20, 50: a partial
// vector at the end of every row otherwise) run on full vectors. The columns of
// v's lanes repeat every `period` = lcm(cols, L) / L vectors; at phase
// p = v % period they are (L p + l) % cols. So per-lane slopes come from
// tile[L p, L p + L), tile[j] = s[j % cols], and per-column sums go to aligned
// slots (PhaseSums), every load and store at the same address as the last one
// of that phase (no store-forwarding stalls). Walks are worth it for narrow
// grids only (kMaxFlatCols); wider ones go row by row.
constexpr int64_t kMaxFlatCols = 512;

inline int64_t flat_period(int64_t cols, int64_t lanes) {
  return std::max<int64_t>(1, cols) / std::gcd(std::max<int64_t>(1, cols), lanes);
}

// What a loop reads of a flat walk, by value: the period, and the slopes' lanes at
// phase p. Loops take it (and PhaseSlots, and channel_pass its body) as their own
// local copy, which the compiler keeps in registers. Read through a FlatWalk, or
// through a lambda's captures by reference, every address was loaded again after
// each vector store (the intrinsics' stores may alias any object): grad_y at
// 10^4 x 20 fp32, one Zen 4 thread, ran 56 us that way and 38 with local copies.
template <typename C>
struct WalkView {
  using V = Vectorized<C>;
  const C* tile;  // the lanes at phase p: tile[L p, L p + L); null: all `constant`
  C constant;
  int64_t period;
  int64_t phase_of(int64_t v) const { return v % period; }
  int64_t next(int64_t p) const { return p + 1 == period ? 0 : p + 1; }
  V slope(int64_t p) const {
    return tile == nullptr ? V(constant) : V::loadu(tile + p * V::size());
  }
};

template <typename C>
class FlatWalk {
 public:
  using V = Vectorized<C>;
  explicit FlatWalk(const Grid<C>& grid) : period_(flat_period(grid.cols, V::size())) {
    if (grid.kind == kVector) {
      tile_.resize(period_ * V::size());
      for (size_t j = 0; j < tile_.size(); ++j) tile_[j] = grid.s[j % grid.cols];
    } else {
      constant_ = grid.kind == kScalar ? grid.s[0] : C(1);
    }
  }
  int64_t period() const { return period_; }
  WalkView<C> view() const { return {tile_.empty() ? nullptr : tile_.data(), constant_, period_}; }

 private:
  int64_t period_;
  std::vector<C> tile_;
  C constant_ = C(1);
};

// Where a loop adds a vector at phase p of a flat walk to PhaseSums' slots, by value
// (see WalkView); null: no sums wanted.
template <typename C>
struct PhaseSlots {
  C* data;
  void add(int64_t p, const Vectorized<C>& v) const {
    C* slot = data + p * Vectorized<C>::size();
    (Vectorized<C>::loadu(slot) + v).store(slot);
  }
};

// Per-column sums of a flat walk: slots().add(p, v) at phase p; fold() writes the
// column sums, slot j going to column j % cols, in slot order (deterministic).
template <typename C>
class PhaseSums {
 public:
  using V = Vectorized<C>;
  PhaseSums(int64_t cols, int64_t period) : cols_(cols), slots_(period * V::size()) {}
  void clear() { std::fill(slots_.begin(), slots_.end(), C(0)); }
  PhaseSlots<C> slots() { return {slots_.data()}; }
  // (The slots are whole rows of cols, slot j being column j % cols: summed row by
  // row, with no division per slot. Per 64-row chunk this ran a modulo per slot,
  // which was ~40 % of the narrow backward's epilogue.)
  void fold(double* out) const {
    std::fill(out, out + cols_, 0.0);
    if (cols_ == 0) return;
    for (size_t row = 0; row < slots_.size(); row += cols_) {
      const C* slot = slots_.data() + row;
      for (int64_t c = 0; c < cols_; ++c) out[c] += slot[c];
    }
  }

 private:
  int64_t cols_;
  std::vector<C> slots_;
};

// `sums`' slots where its partials are wanted (`part` not null), else null slots.
template <typename C>
inline PhaseSlots<C> wanted_slots(const double* part, PhaseSums<C>& sums) {
  return part != nullptr ? sums.slots() : PhaseSlots<C>{nullptr};
}

// Loading and storing T as lanes of its compute type C: float and double as
// themselves; bfloat16 and float16 widened to float (one rounding back to T at
// the store, where eager PyTorch rounds after every op).
template <typename T>
struct Io {
  using C = T;
  static Vectorized<C> load(const T* p, int64_t n) { return Vectorized<C>::loadu(p, n); }
  static void store(const Vectorized<C>& v, T* p, int64_t n) { v.store(p, n); }
};

// The first half of a 16-bit vector (as many lanes as a float vector has), with one
// plain store: Vectorized<T>::store(p, n < size()) is a masked store on AVX-512, and a
// load that overlaps a masked store's width (an in-place pass reads the next lanes right
// after) waits for that store to retire: the in-place forward ran at half speed.
template <typename T>
inline void store_first_half(const Vectorized<T>& v, T* p) {
#if defined(CPU_CAPABILITY_AVX512)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_castsi512_si256(v));
#elif defined(CPU_CAPABILITY_AVX2)
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(v));
#else
  v.store(p, Vectorized<T>::size() / 2);
#endif
}

template <typename T>
struct WidenedIo {
  using C = float;
  static constexpr int64_t kLanes = Vectorized<float>::size();
  // A whole vector converts in registers (at::vec's load_to_float / convert_from_float:
  // a shift for bfloat16, F16C for float16, round-to-nearest-even on the way back, as
  // c10's scalar conversions round); a tail goes element by element.
  static Vectorized<C> load(const T* p, int64_t n) {
    if (n == kLanes) {
      Vectorized<float> v;
      at::vec::load_to_float<T>(p, v);
      return v;
    }
    float lanes[kLanes];
    for (int64_t i = 0; i < n; ++i) lanes[i] = static_cast<float>(p[i]);
    return Vectorized<C>::loadu(lanes, n);
  }
  static void store(const Vectorized<C>& v, T* p, int64_t n) {
    if (n == kLanes) {
      store_first_half(at::vec::convert_from_float<T>(v, v), p);
      return;
    }
    float lanes[kLanes];
    v.store(lanes, n);
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(lanes[i]);
  }
};
template <>
struct Io<c10::BFloat16> : WidenedIo<c10::BFloat16> {};
template <>
struct Io<c10::Half> : WidenedIo<c10::Half> {};

template <typename T>
using Compute = typename Io<T>::C;

// n contiguous 16-bit values widened into float (to), and back, rounded once
// (narrow_run): a whole 16-bit vector (two float vectors) at a time, the tail through
// WidenedIo (whose store converts both halves of a 16-bit vector to keep one). The
// chunk buffers of a 16-bit narrow layer (csrc/laaf_cpu.cpp: ChunkStage); against
// WidenedIo alone the layer's time moved within noise, and the two conversions are
// ~15 % of its forward (perf, bf16 10^5 x 50 x 50).
template <typename T>
void widen_run(const T* from, int64_t n, float* to) {
  constexpr int64_t L = Vectorized<float>::size();
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    Vectorized<float> lo, hi;
    at::vec::load_to_float<T>(from + i, lo, hi);
    lo.store(to + i);
    hi.store(to + i + L);
  }
  for (; i < n; i += L) {
    const int64_t live = std::min<int64_t>(L, n - i);
    WidenedIo<T>::load(from + i, live).store(to + i, live);
  }
}
template <typename T>
void narrow_run(const float* from, int64_t n, T* to) {
  constexpr int64_t L = Vectorized<float>::size();
  int64_t i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    at::vec::convert_from_float<T>(Vectorized<float>::loadu(from + i),
                                   Vectorized<float>::loadu(from + i + L))
        .store(to + i);
  }
  for (; i < n; i += L) {
    const int64_t live = std::min<int64_t>(L, n - i);
    WidenedIo<T>::store(Vectorized<float>::loadu(from + i, live), to + i, live);
  }
}

// rows x cols of a 16-bit matrix (strides rs, cs) into `dst`, float rows of `cols`
// values, contiguous (a narrow layer's chunk of x: ChunkStage).
template <typename T>
void widen_rows(const T* src, int64_t rs, int64_t cs, int64_t rows, int64_t cols, float* dst) {
  if (cs == 1 && rs == cols) return widen_run(src, rows * cols, dst);  // (one run)
  for (int64_t r = 0; r < rows; ++r) {
    if (cs == 1) {
      widen_run(src + r * rs, cols, dst + r * cols);
    } else {
      for (int64_t c = 0; c < cols; ++c) dst[r * cols + c] = float(src[r * rs + c * cs]);
    }
  }
}

inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

// Rows longer than kRowSegment elements (a multiple of every vector width) are cut into
// segments of that many, each a task of its own: a grid of a few long rows (NCHW with
// few channels and large images; a few wide rows) then still spreads over every
// thread. The cut depends on cols alone, not on the thread count.
constexpr int64_t kRowSegment = 8192;

inline int64_t row_segments(int64_t cols) {
  return std::max<int64_t>(1, (cols + kRowSegment - 1) / kRowSegment);
}

// f(r, task, c0, c1) for each segment [c0, c1) of each row r, threaded over the
// rows * row_segments(cols) tasks; task = r * row_segments(cols) + the segment's index.
template <typename F>
void for_row_segments(int64_t rows, int64_t cols, const F& f) {
  const int64_t segments = row_segments(cols);
  const int64_t width = segments == 1 ? cols : kRowSegment;
  at::parallel_for(0, rows * segments, grain(width), [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c0 = (t % segments) * width;
      f(t / segments, t, c0, std::min(cols, c0 + width));
    }
  });
}

// Per-lane double sums of a run of vectors (a row segment of channel_pass on_rows),
// added up in lane order at the end. (Not laaf_cpu_lane_sums.h's lane_sums, which
// reduces L vectors to their L sums at once.) Every lane is a chain of its own, so successive
// vectors' adds overlap; summing each vector's lanes into one double (a chain of L
// dependent adds per vector) bound channel_pass on_rows: NCHW act_bwd ran ~1.3 ms at
// 64x32x32x32 fp32 that way on two Zen 4 threads (stop 36).
template <typename C>
struct PerLaneSums {
  static constexpr int64_t L = Vectorized<C>::size();
  double lane[L] = {};

  void add(const Vectorized<C>& v, int64_t n) {  // lanes [0, n) of v
    C x[L];
    v.store(x);
    if (n == L) {
      for (int64_t i = 0; i < L; ++i) lane[i] += x[i];
    } else {
      for (int64_t i = 0; i < n; ++i) lane[i] += x[i];
    }
  }
  double total() const {
    double sum = 0;
    for (int64_t i = 0; i < L; ++i) sum += lane[i];
    return sum;
  }
};

// Fold `count` per-chunk partials of `width` values each, of element type P, into
// width double sums, in part order.
template <typename P>
inline std::vector<double> fold_sums(const P* parts, int64_t count, int64_t width) {
  std::vector<double> out(width, 0.0);
  for (int64_t k = 0; k < count; ++k) {
    for (int64_t j = 0; j < width; ++j) out[j] += parts[k * width + j];
  }
  return out;
}

// A 1-D double tensor holding `values`.
inline Tensor doubles_tensor(const std::vector<double>& values, const at::TensorOptions& like) {
  Tensor out = at::empty({static_cast<int64_t>(values.size())}, like.dtype(at::kDouble));
  std::copy(values.begin(), values.end(), out.data_ptr<double>());
  return out;
}

// fold_sums of a (parts, width) tensor of double partials, as a double tensor.
inline Tensor sum_parts(const Tensor& parts, int64_t width) {
  const int64_t count = parts.numel() / std::max<int64_t>(1, width);
  return doubles_tensor(fold_sums(parts.data_ptr<double>(), count, width), parts.options());
}

// ---------------------------------------------------------------------------
// channel_pass: one element-wise pass that also sums terms per channel
// ---------------------------------------------------------------------------

// The per-channel values at the lanes of one vector: a (the slope s, a flexible
// kind's p0) and b (a second per-channel tensor: p1, or a cotangent of ds).
template <typename C>
struct ChannelLanes {
  Vectorized<C> a, b;
};

// One vectorised, threaded pass over the (rows, cols) grid of `a` (b has the same
// layout). At every vector of lanes [at, at + n) of the contiguous buffer,
// body(at, n, lanes) stores its element-wise outputs itself and returns NSUMS
// vectors of terms whose per-channel sums are wanted; sum j goes to parts[j]
// (null: not wanted) as deterministic partials:
//   channels last: parts[j][k * cols + c] for chunk k of kRowsPerChunk rows
//                  ((chunks, cols) doubles; a flat walk when cols <= kMaxFlatCols);
//   on_rows:       parts[j][task] += the sum over one segment of a row
//                  ((rows * row_segments(cols),) doubles, zeroed; for_row_segments).
// Fold them with fold_channel_partials. `body` should capture its pointers by value:
// each task runs a local copy of it (see WalkView).
template <typename C, size_t NSUMS, typename Body>
void channel_pass(const Grid<C>& a, const Grid<C>& b, const std::array<double*, NSUMS>& parts,
                  const Body& body) {
  using V = Vectorized<C>;
  const int64_t rows = a.rows, cols = a.cols;
  if (rows * cols == 0) return;
  // Row by row, a task per segment of a row (for_row_segments): slopes per row (each
  // segment adds its lane sums), and wide rows with nothing to sum. (Wide rows with
  // sums go by chunks of rows, below: 64 x 20000 fp32 act_fwd ran 1.7x slower that
  // way, on one task per segment of the single chunk.)
  if (a.on_rows || (NSUMS == 0 && cols > kMaxFlatCols)) {
    for_row_segments(rows, cols, [&](int64_t r, int64_t task, int64_t c0, int64_t c1) {
      const Body run = body;  // (local copies: see WalkView)
      const std::array<double*, NSUMS> out = parts;
      std::array<PerLaneSums<C>, NSUMS> sums;
      // The segment's vectors, lanes_at(c, n) giving their ChannelLanes.
      auto walk = [&](const auto& lanes_at) __attribute__((always_inline)) {
        for (int64_t c = c0; c < c1; c += V::size()) {
          const int64_t n = std::min<int64_t>(V::size(), c1 - c);
          const auto terms = run(r * cols + c, n, lanes_at(c, n));
          for (size_t j = 0; j < NSUMS; ++j) {
            if (out[j] != nullptr) sums[j].add(terms[j], n);
          }
        }
      };
      if (a.on_rows) {  // the row's channel, hoisted
        const ChannelLanes<C> lanes{a.slope(r, 0, V::size()), b.slope(r, 0, V::size())};
        walk([lanes](int64_t, int64_t) { return lanes; });
      } else {
        walk([a, b](int64_t c, int64_t n) {  // (copies of the grids: see WalkView)
          return ChannelLanes<C>{a.slope(0, c, n), b.slope(0, c, n)};
        });
      }
      for (size_t j = 0; j < NSUMS; ++j) {
        if (out[j] != nullptr) out[j][task] += sums[j].total();
      }
    });
    return;
  }
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  if (cols > kMaxFlatCols) {  // wide: row by row, column sums in a per-task buffer
    // A task is one chunk of rows times one segment of columns: each column's sum over
    // the chunk runs in row order whichever task holds it, so parts[j][k * cols + c]
    // come out the same however the columns are cut.
    const int64_t segments = row_segments(cols);
    const int64_t width = segments == 1 ? cols : kRowSegment;
    at::parallel_for(0, chunks * segments, grain(kRowsPerChunk * width), [&](int64_t t0,
                                                                            int64_t t1) {
      std::vector<C> acc(NSUMS * width);
      const Body run = body;  // (a local copy: see WalkView)
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t k = t / segments, c0 = (t % segments) * width;
        const int64_t c1 = std::min(cols, c0 + width);
        std::fill(acc.begin(), acc.end(), C(0));
        for (int64_t r = k * kRowsPerChunk; r < std::min(rows, (k + 1) * kRowsPerChunk); ++r) {
          for (int64_t c = c0; c < c1; c += V::size()) {
            const int64_t n = std::min<int64_t>(V::size(), c1 - c);
            const auto terms = run(r * cols + c, n,
                                   ChannelLanes<C>{a.slope(0, c, n), b.slope(0, c, n)});
            for (size_t j = 0; j < NSUMS; ++j) {
              C* slot = acc.data() + j * width + (c - c0);
              (V::loadu(slot, n) + terms[j]).store(slot, n);
            }
          }
        }
        for (size_t j = 0; j < NSUMS; ++j) {
          if (parts[j] != nullptr) {
            std::copy(acc.begin() + j * width, acc.begin() + j * width + (c1 - c0),
                      parts[j] + k * cols + c0);
          }
        }
      }
    });
    return;
  }
  // Narrow: each chunk is one flat walk on full vectors (FlatWalk, PhaseSums), whole
  // vectors first, then the last one's live lanes. The loop reads local copies of the
  // walks, the slots and the body (see WalkView).
  const FlatWalk<C> walk_a(a), walk_b(b);
  const int64_t total = rows * cols, per_chunk = kRowsPerChunk * cols;  // whole vectors
  at::parallel_for(0, chunks, grain(per_chunk), [&](int64_t k0, int64_t k1) {
    std::vector<PhaseSums<C>> sums(NSUMS, PhaseSums<C>(cols, walk_a.period()));
    std::array<PhaseSlots<C>, NSUMS> slots;
    for (size_t j = 0; j < NSUMS; ++j) slots[j] = wanted_slots(parts[j], sums[j]);
    const Body run = body;
    const WalkView<C> va = walk_a.view(), vb = walk_b.view();
    for (int64_t k = k0; k < k1; ++k) {
      for (auto& s : sums) s.clear();
      const int64_t end = std::min(total, (k + 1) * per_chunk);
      int64_t p = va.phase_of(k * per_chunk / V::size());
      auto step = [&](int64_t at, int64_t n) __attribute__((always_inline)) {
        const auto terms = run(at, n, ChannelLanes<C>{va.slope(p), vb.slope(p)});
        for (size_t j = 0; j < NSUMS; ++j) {  // (V::set keeps the n live lanes only)
          if (slots[j].data != nullptr) {
            slots[j].add(p, n == V::size() ? terms[j] : V::set(V(C(0)), terms[j], n));
          }
        }
        p = va.next(p);
      };
      int64_t at = k * per_chunk;
      for (; at + V::size() <= end; at += V::size()) step(at, V::size());
      if (at < end) step(at, end - at);
      for (size_t j = 0; j < NSUMS; ++j) {
        if (parts[j] != nullptr) sums[j].fold(parts[j] + k * cols);
      }
    }
  });
}

// The partials buffer of channel_pass for `count` sums: (count, chunks, cols) for
// channels last, (count, rows) zeroed for on_rows; undefined when not wanted.
inline Tensor channel_partials(bool wanted, int64_t count, int64_t rows, int64_t cols, bool on_rows,
                               const at::TensorOptions& like) {
  if (!wanted) return Tensor();
  const auto dbl = like.dtype(at::kDouble);
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  return on_rows ? at::zeros({count, rows * row_segments(cols)}, dbl)
                 : at::empty({count, chunks, cols}, dbl);
}

// The per-channel double sums of one sum's channel_pass partials (e.g. buffer.select(0, j)):
// chunks folded in order; for on_rows, each row's segments in order, then the rows
// (outer, C) onto the C channels.
inline Tensor fold_channel_partials(const Tensor& partials, bool on_rows, int64_t channels,
                                    int64_t cols) {
  if (!on_rows) return sum_parts(partials, cols);
  const int64_t segments = row_segments(cols);
  if (segments == 1) return sum_parts(partials, channels);
  const Tensor parts = partials.contiguous();
  const int64_t rows = parts.numel() / segments;
  Tensor per_row = at::empty({rows}, parts.options());
  const double* p = parts.data_ptr<double>();
  double* out = per_row.data_ptr<double>();
  for (int64_t r = 0; r < rows; ++r) {
    double total = 0;
    for (int64_t j = 0; j < segments; ++j) total += p[r * segments + j];
    out[r] = total;
  }
  return sum_parts(per_row, channels);
}

// The data of each of the `count` sums of a channel_partials buffer (nulls if undefined).
template <size_t NSUMS>
std::array<double*, NSUMS> partial_slots(const Tensor& partials) {
  std::array<double*, NSUMS> slots{};
  for (size_t j = 0; j < NSUMS && partials.defined(); ++j) {
    slots[j] = partials.select(0, static_cast<int64_t>(j)).data_ptr<double>();
  }
  return slots;
}

// The grid of a T tensor; s_c is the slope already in T's compute type (see slope_in).
template <typename T>
Grid<Compute<T>> make_grid(int64_t rows, int64_t cols, const Tensor& s_c, int kind,
                           bool on_rows, int64_t channels) {
  return Grid<Compute<T>>{rows, cols, data_or_null<Compute<T>>(s_c),
                          kind, on_rows, channels};
}

// s = n * a (or a flexible kind's params) in the compute type of `dtype`, contiguous
// (the slope stays fp32 under autocast).
inline Tensor slope_in(const c10::optional<Tensor>& s, at::ScalarType dtype) {
  if (!s.has_value()) return Tensor();
  const bool widened = dtype == at::kBFloat16 || dtype == at::kHalf;
  return s->to(widened ? at::kFloat : dtype).contiguous();
}

inline void check_dtype(const Tensor& t, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                  dtype == at::kHalf,
              "laaf cpp backend: ", name, " must be float32, float64, bfloat16 or float16, got ",
              dtype);
}

#define LAAF_DISPATCH_CPU_TYPES(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, name, __VA_ARGS__)

}  // namespace cpu
}  // namespace laaf
