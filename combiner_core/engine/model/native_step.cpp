// The decoder layers of one decode step, for CPU float32: the same arithmetic as
// DecoderRunner._forward's layer loop (decoder.py), in one call.
//
// Why native: at the small shapes a CPU engine runs (tens of rows, hidden ~100-800),
// a step is ~15 tensor ops per layer of a few microseconds each, and per-op cost
// (Python, dispatch, OpenMP fork-join, allocation) outweighs the arithmetic. Here the
// matmuls stay ATen's (oneDNN on prepacked weights, or MKL); attention, norms and
// residuals are plain loops, parallel over the rows (rows are independent within a
// step: a row attends to its own cache and its slot's source states only). The rows
// can also be split into row groups, one per thread, each running the whole layer
// stack on its rows (`chunks`); the engine runs one group (runner.py's chunks() says
// why), the tests every split.
//
// Layouts (DecoderRunner's buffers, all contiguous):
//   x          [N, D]                  hidden states of the first N rows, updated in place
//   cache[l]   [rows, T, 2, H, d]      self-attention K|V; row r writes column age[r]
//   cross[l]   [slots, cap, 2, H, d]   cross-attention K|V, shared by a slot's `group` rows
//   self_bias  [rows, T], cross_bias [slots, cap]: additive masks (0 or dtype min)
//   rel        [tables, H, 2T - 1] T5's relative position bias (empty: none); a row at
//              column age adds rel[table, h, T - 1 - age + j] to its score for column j
// The self-attention scale is folded into the q rows of the fused q|k|v weight
// (decoder.py's _fuse), so scores are plain dot products. I = heads * head_dim is the
// attention width (T5's num_heads * d_kv may differ from the hidden size D).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/quantized/PackedParams.h>
#include <torch/csrc/jit/api/object.h>

#include <algorithm>
#include <cmath>
#include <cfloat>
#include <cstring>
#include <vector>

namespace {

// exp as Cephes' expf (exp(x) = 2^n exp(r), |r| <= ln2/2, a degree-5 polynomial;
// about 1 ulp): plain arithmetic, so loops over it vectorize (std::exp does not, and
// was half of a step's attention time). Below -87.3 (masked scores) it returns 0, as
// SDPA's softmax does; above 88.3 it saturates near FLT_MAX.
inline float fast_exp(float x) {
  const float c = std::min(std::max(x, -87.3f), 88.3f);
  const float n = std::floor(c * 1.44269504088896341f + 0.5f);
  const float r = c - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.0f : p * scale;
}

// GPT-2's gelu_new, 0.5 x (1 + tanh(c (x + 0.044715 x^3))), as x * sigmoid(2c (...))
// (decoder.py's _gelu_tanh: the same function), and SiLU, x * sigmoid(x), in place.
// ATen's tanh-form gelu took 2.8 ns an element here, 13% of a beam step's forward.
inline void gelu_tanh(float* y, int64_t n) {
  constexpr float c1 = 1.5957691216057308f;  // 2 sqrt(2 / pi)
  constexpr float c3 = c1 * 0.044715f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float v = y[i];
    y[i] = v / (1.0f + fast_exp(-(v * (c1 + c3 * v * v))));
  }
}

inline void silu(float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = y[i] / (1.0f + fast_exp(-y[i]));
}

// One query against w keys/values that sit `stride` floats apart; bias[j] (and rel[j],
// T5's relative position bias, when not null) is added to score j. out gets the
// softmax-weighted sum of the values. Keys and values go four at a time: four
// independent sums share each load of q (and each load/store of out), where one key at a
// time made every dot product a single dependent chain of fused multiply-adds.
inline void attend(const float* q, const float* k, const float* v, int64_t stride, const float* bias,
                   const float* rel, int64_t w, int64_t d, float* out, float* scores) {
  float mx = -FLT_MAX;
  int64_t j = 0;
  for (; j + 4 <= w; j += 4) {
    const float* k0 = k + j * stride;
    const float* k1 = k0 + stride;
    const float* k2 = k1 + stride;
    const float* k3 = k2 + stride;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < d; ++i) {
      const float qi = q[i];
      s0 += qi * k0[i];
      s1 += qi * k1[i];
      s2 += qi * k2[i];
      s3 += qi * k3[i];
    }
    const float s[4] = {s0, s1, s2, s3};
    for (int64_t t = 0; t < 4; ++t) {
      float x = s[t] + bias[j + t];
      if (rel != nullptr) x += rel[j + t];
      scores[j + t] = x;
      mx = std::max(mx, x);
    }
  }
  for (; j < w; ++j) {
    const float* kj = k + j * stride;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < d; ++i) s += q[i] * kj[i];
    s += bias[j];
    if (rel != nullptr) s += rel[j];
    scores[j] = s;
    mx = std::max(mx, s);
  }
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t t = 0; t < w; ++t) {
    const float e = fast_exp(scores[t] - mx);
    scores[t] = e;
    sum += e;
  }
  const float inv = 1.0f / sum;
  for (int64_t i = 0; i < d; ++i) out[i] = 0.0f;
  j = 0;
  for (; j + 4 <= w; j += 4) {
    const float* v0 = v + j * stride;
    const float* v1 = v0 + stride;
    const float* v2 = v1 + stride;
    const float* v3 = v2 + stride;
    const float p0 = scores[j] * inv, p1 = scores[j + 1] * inv, p2 = scores[j + 2] * inv, p3 = scores[j + 3] * inv;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] += (p0 * v0[i] + p1 * v1[i]) + (p2 * v2[i] + p3 * v3[i]);
  }
  for (; j < w; ++j) {
    const float* vj = v + j * stride;
    const float p = scores[j] * inv;
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] += p * vj[i];
  }
}

// y = LayerNorm(x) row by row (y may be x).
inline void layer_norm(const float* x, float* y, int64_t m, int64_t D, const float* w, const float* b, float eps) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    float mean = 0.0f;
#pragma omp simd reduction(+ : mean)
    for (int64_t i = 0; i < D; ++i) mean += xr[i];
    mean /= static_cast<float>(D);
    float var = 0.0f;
#pragma omp simd reduction(+ : var)
    for (int64_t i = 0; i < D; ++i) {
      const float t = xr[i] - mean;
      var += t * t;
    }
    var /= static_cast<float>(D);
    const float rs = 1.0f / std::sqrt(var + eps);
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] - mean) * rs * w[i] + b[i];
  }
}

// y = T5's RMS norm of x row by row (y may be x): x / sqrt(mean(x^2) + eps) * w, no
// mean, no bias (T5LayerNorm, which accumulates in float32 as here).
inline void rms_norm(const float* x, float* y, int64_t m, int64_t D, const float* w, float eps) {
  for (int64_t r = 0; r < m; ++r) {
    const float* xr = x + r * D;
    float* yr = y + r * D;
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < D; ++i) ss += xr[i] * xr[i];
    const float rs = 1.0f / std::sqrt(ss / static_cast<float>(D) + eps);
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) yr[i] = w[i] * (xr[i] * rs);
  }
}

// LayerNorm or RMS norm, as the description says.
inline void norm(bool rms, const float* x, float* y, int64_t m, int64_t D, const float* w, const float* b, float eps) {
  if (rms) rms_norm(x, y, m, D, w, eps);
  else layer_norm(x, y, m, D, w, b, eps);
}

// x += a + bias (pre-LN residual), or x = LayerNorm(x + a + bias) (post-LN).
inline void residual(float* x, const float* a, const float* bias, int64_t m, int64_t D, bool post,
                     const float* nw, const float* nb, float eps) {
  for (int64_t r = 0; r < m; ++r) {
    float* xr = x + r * D;
    const float* ar = a + r * D;
#pragma omp simd
    for (int64_t i = 0; i < D; ++i) xr[i] += ar[i] + bias[i];
  }
  if (post) layer_norm(x, x, m, D, nw, nb, eps);
}

inline void add_bias(float* y, const float* bias, int64_t m, int64_t n) {
  for (int64_t r = 0; r < m; ++r) {
    float* yr = y + r * n;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) yr[i] += bias[i];
  }
}

// Every row r < N writes at column ages[r] of its row of a T-column buffer: outside
// [0, T) it would overwrite another row, so both entry points refuse that.
inline void check_columns(const int64_t* ages, int64_t N, int64_t T, const char* who) {
  for (int64_t r = 0; r < N; ++r)
    TORCH_CHECK(ages[r] >= 0 && ages[r] < T, who, ": row ", r, " at column ", ages[r], " outside [0, ", T, ")");
}

enum Act : int64_t { kGelu = 0, kGeluTanh = 1, kRelu = 2, kSilu = 3 };

// int8 (quantize.py's int8_linear, the same arithmetic): out[m, n] = in[m, k] @ W.T with W
// fbgemm's packed per-channel int8 weights and each row of `in` quantized on its own:
// divided by its max |x| into xn (rows m + 1), an anchor row [1, -1, 0...] appended so
// that the per-tensor range linear_dynamic quantizes over is exactly [-1, 1] whatever
// the rows, then the result multiplied back by the row's scale. A row's output thus
// depends on that row only (the torch step's bits, up to float rounding elsewhere).
// Called from inside the row groups' parallel_for, fbgemm runs single-threaded there.
inline void int8_mm(at::Tensor& out, const at::Tensor& in, const c10::intrusive_ptr<LinearPackedParamsBase>& w,
                    at::Tensor& xn) {
  const int64_t m = in.size(0), k = in.size(1), n = out.size(1);
  float* xp = xn.data_ptr<float>();
  const float* ip = in.data_ptr<float>();
  std::vector<float> scale(m);
  for (int64_t r = 0; r < m; ++r) {
    const float* x = ip + r * k;
    float mx = 0.0f;
    for (int64_t i = 0; i < k; ++i) mx = std::max(mx, std::fabs(x[i]));
    const float sc = std::max(mx, FLT_MIN);  // torch.finfo(float32).tiny, as int8_linear's clamp
    scale[r] = sc;
    float* y = xp + r * k;
#pragma omp simd
    for (int64_t i = 0; i < k; ++i) y[i] = x[i] / sc;
  }
  float* a = xp + m * k;
  for (int64_t i = 0; i < k; ++i) a[i] = 0.0f;
  a[0] = 1.0f;
  if (k > 1) a[1] = -1.0f;
  at::Tensor y = w->apply_dynamic(xn, /*reduce_range=*/true);
  const float* yp = y.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t r = 0; r < m; ++r) {
    const float sc = scale[r];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) op[r * n + i] = yp[r * n + i] * sc;
  }
}

// Per layer, 18 tensors in this order (decoder.py's LayerSpec; weights [out, in], a
// missing bias passed as zeros; gated: fc1 holds wi_0 then wi_1, [2F, D]):
//   0 self_norm.w  1 self_norm.b  2 qkv.w  3 qkv.b  4 self_out.w  5 self_out.b
//   6 cross_norm.w 7 cross_norm.b 8 cross_q.w 9 cross_q.b 10 cross_out.w 11 cross_out.b
//   12 ffn_norm.w 13 ffn_norm.b 14 fc1.w 15 fc1.b 16 fc2.w 17 fc2.b
constexpr size_t kPerLayer = 18;

class Layers {
 public:
  Layers(std::vector<at::Tensor> weights, std::vector<double> eps, int64_t heads, int64_t act, bool pre_ln, bool rms,
         bool gated)
      : w_(std::move(weights)), heads_(heads), act_(act), pre_(pre_ln), rms_(rms), gated_(gated) {
    TORCH_CHECK(w_.size() % kPerLayer == 0 && !w_.empty(), "native step: expected 18 tensors per layer, got ", w_.size());
    layers_ = static_cast<int64_t>(w_.size() / kPerLayer);
    TORCH_CHECK(static_cast<int64_t>(eps.size()) == 3 * layers_, "native step: expected 3 eps per layer");
    for (double e : eps) eps_.push_back(static_cast<float>(e));
    TORCH_CHECK(act >= kGelu && act <= kSilu, "native step: unknown activation code ", act);
    hidden_ = w_[4].size(0);  // self_out.w [hidden, inner]
    inner_ = w_[4].size(1);
    TORCH_CHECK(inner_ % heads_ == 0, "native step: attention width ", inner_, " not divisible by heads ", heads_);
    TORCH_CHECK(!gated_ || w_[14].size(0) % 2 == 0, "native step: a gated fc1 needs an even number of rows");
    for (size_t i = 0; i < w_.size(); ++i) {
      const auto& t = w_[i];
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "native step: CPU float32 weights only");
      // norms and biases are read as raw arrays; weight matrices go to ATen as they are
      const size_t k = i % kPerLayer;
      const bool matrix = k == 2 || k == 4 || k == 8 || k == 10 || k == 14 || k == 16;
      if (matrix) w_[i] = t.t();  // [in, out] views: mm(x, w) computes x @ weight.T
      else TORCH_CHECK(t.is_contiguous() && t.dim() == 1, "native step: norm/bias ", k, " must be a contiguous vector");
    }
  }

  // int8: the packed weights of every layer's six matrices (qkv, self_out, cross_q,
  // cross_out, fc1, fc2), torch ScriptObjects from quantize.pack_int8; from then on the
  // matmuls run int8_mm (the float weights given to the constructor only set the shapes).
  void set_int8(const std::vector<pybind11::object>& packed) {
    TORCH_CHECK(static_cast<int64_t>(packed.size()) == 6 * layers_, "native step: expected 6 packed weights per layer");
    q_.clear();
    for (const auto& obj : packed) {
      auto object = pybind11::cast<torch::jit::Object>(obj);
      c10::IValue value(object._ivalue());
      auto holder = value.toObject()->getSlot(0).toCapsule();
      q_.push_back(c10::static_intrusive_pointer_cast<LinearPackedParamsBase>(holder));
    }
  }

  // float32 with prepacked weights (packed.py): every layer's six matrices (qkv,
  // self_out, cross_q, cross_out, fc1, fc2) as oneDNN tensors from
  // torch.ops.mkldnn._reorder_linear_weight; from then on the matmuls run oneDNN's
  // linear on them. Why: at decode shapes (tens of rows) MKL's sgemm repacks the whole
  // weight on every call, which cost more than the multiply itself (packed.py).
  void set_packed(const std::vector<at::Tensor>& packed) {
    TORCH_CHECK(static_cast<int64_t>(packed.size()) == 6 * layers_, "native step: expected 6 packed weights per layer");
    TORCH_CHECK(q_.empty(), "native step: int8 and packed float32 weights exclude each other");
    for (const auto& t : packed) TORCH_CHECK(t.is_mkldnn(), "native step: packed weights must be oneDNN tensors");
    p_ = packed;
  }

  // Runs every layer on the first N = x.size(0) rows. chunks: how many row groups run
  // in parallel (each whole slots); 1 runs on the calling thread, with ATen's own
  // threading inside each matmul and the per-row loops shared by the threads.
  void run(at::Tensor x, const std::vector<at::Tensor>& caches, const std::vector<at::Tensor>& crosses,
           const at::Tensor& age, const at::Tensor& self_bias, const at::Tensor& cross_bias, const at::Tensor& rel,
           int64_t self_w, int64_t src_w, int64_t group, int64_t chunks) const {
    const int64_t N = x.size(0), D = hidden_, I = inner_;
    TORCH_CHECK(x.is_contiguous() && x.dim() == 2 && x.size(1) == D && x.scalar_type() == at::kFloat,
                "native step: x must be a contiguous float32 [N, ", D, "]");
    TORCH_CHECK(static_cast<int64_t>(caches.size()) == layers_ && static_cast<int64_t>(crosses.size()) == layers_,
                "native step: one cache and one cross buffer per layer");
    TORCH_CHECK(age.is_contiguous() && age.scalar_type() == at::kLong && age.size(0) >= N, "native step: age");
    TORCH_CHECK(self_bias.is_contiguous() && cross_bias.is_contiguous(), "native step: biases must be contiguous");
    TORCH_CHECK(N % group == 0, "native step: rows ", N, " not a multiple of group ", group);
    const int64_t T = self_bias.size(1), cap = cross_bias.size(1);
    TORCH_CHECK(self_w >= 1 && self_w <= T && src_w >= 1 && src_w <= cap, "native step: widths out of range");
    if (rel.numel() > 0)
      TORCH_CHECK(rel.is_contiguous() && rel.scalar_type() == at::kFloat && rel.dim() == 3 &&
                      (rel.size(0) == 1 || rel.size(0) == layers_) && rel.size(1) == heads_ && rel.size(2) == 2 * T - 1,
                  "native step: rel must be a contiguous float32 [1 or layers, heads, 2T - 1]");
    for (int64_t l = 0; l < layers_; ++l) {
      TORCH_CHECK(caches[l].is_contiguous() && caches[l].size(1) == T && caches[l].numel() == caches[l].size(0) * T * 2 * I,
                  "native step: cache layout");
      TORCH_CHECK(crosses[l].is_contiguous() && crosses[l].size(1) == cap && crosses[l].numel() == crosses[l].size(0) * cap * 2 * I,
                  "native step: cross layout");
      TORCH_CHECK(caches[l].size(0) >= N && crosses[l].size(0) >= N / group, "native step: buffers hold too few rows");
    }
    check_columns(age.data_ptr<int64_t>(), N, T, "native step");
    const int64_t slots = N / group;
    chunks = std::max<int64_t>(1, std::min(chunks, slots));
    if (chunks == 1) {
      run_rows(x, caches, crosses, age, self_bias, cross_bias, rel, self_w, src_w, group, 0, slots);
      return;
    }
    // Worker threads start outside the caller's autograd / inference mode: carry it over.
    const bool inference = c10::InferenceMode::is_enabled();
    const bool grad = c10::GradMode::is_enabled();
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      c10::InferenceMode inference_guard(inference);
      c10::AutoGradMode grad_guard(grad);
      for (int64_t c = c0; c < c1; ++c)
        run_rows(x, caches, crosses, age, self_bias, cross_bias, rel, self_w, src_w, group, slots * c / chunks,
                 slots * (c + 1) / chunks);
    });
  }

 private:
  // Slots [s0, s1): rows [s0 * group, s1 * group).
  void run_rows(const at::Tensor& x_all, const std::vector<at::Tensor>& caches, const std::vector<at::Tensor>& crosses,
                const at::Tensor& age_all, const at::Tensor& self_bias, const at::Tensor& cross_bias, const at::Tensor& rel,
                int64_t self_w, int64_t src_w, int64_t group, int64_t s0, int64_t s1) const {
    const int64_t r0 = s0 * group, m = (s1 - s0) * group;
    if (m == 0) return;
    const int64_t D = hidden_, I = inner_, H = heads_, d = I / H;
    const int64_t T = self_bias.size(1), cap = cross_bias.size(1);
    const bool post = !pre_;
    at::Tensor x = x_all.narrow(0, r0, m);
    float* xp = x.data_ptr<float>();
    const int64_t* age = age_all.data_ptr<int64_t>() + r0;
    const float* sbias = self_bias.data_ptr<float>();
    const float* cbias = cross_bias.data_ptr<float>();
    at::Tensor h = at::empty({m, D}, x.options());       // normed input of a block (pre-LN)
    at::Tensor att = at::empty({m, I}, x.options());     // attention output, per head
    // The matmuls' outputs: buffers for at::mm_out and int8_mm; oneDNN's linear returns
    // tensors of its own (matmul() rebinds these), so with packed weights none is made.
    const bool own_outputs = !p_.empty();
    auto output = [&](int64_t cols) { return own_outputs ? at::Tensor() : at::empty({m, cols}, x.options()); };
    at::Tensor proj = output(D);  // a block's output projection
    at::Tensor qkv = output(3 * I);
    at::Tensor cq = output(I);
    const int64_t F = gated_ ? w_[14].size(1) / 2 : w_[14].size(1);  // the feed-forward width
    at::Tensor ff = output(w_[14].size(1));
    at::Tensor gate = gated_ ? at::empty({m, F}, x.options()) : at::Tensor();  // act(wi_0 h) * wi_1 h
    float* hp = h.data_ptr<float>();
    float* ap = att.data_ptr<float>();
    float* pp = nullptr;  // proj's data, read after each matmul into it
    const float* relp = rel.numel() > 0 ? rel.data_ptr<float>() : nullptr;
    const int64_t rel_tables = rel.numel() > 0 ? rel.size(0) : 0;
    const int64_t most = std::max(T, cap);  // the scores a row's attention needs at most
    // Per-row work (norms, residuals, attention, the gate) runs in at::parallel_for over
    // the rows: with one row group (chunks == 1) the threads share it, as they share each
    // matmul; inside a row group's own thread (chunks > 1) it runs inline (ATen does not
    // nest parallel regions).
    auto rows = [m](int64_t grain, const auto& fn) { at::parallel_for(0, m, grain, fn); };
    auto norm_rows = [&](float* out, const float* w, const float* b, float eps) {
      rows(8, [&](int64_t a, int64_t e) { norm(rms_, xp + a * D, out + a * D, e - a, D, w, b, eps); });
    };
    auto residual_rows = [&](const float* bias, const float* nw, const float* nb, float eps) {
      rows(8, [&](int64_t a, int64_t e) { residual(xp + a * D, pp + a * D, bias, e - a, D, post, nw, nb, eps); });
    };
    // Each row attends over its own columns only. Self-attention: its prefix [0, age]
    // (self_w is the OLDEST row's; younger rows' later columns are masked). Cross-
    // attention: its slot's source up to the last unmasked position (self_w's source
    // counterpart src_w is the longest source among the slots; sources are padded at the
    // end). Masked columns add exactly 0 (fast_exp is 0 below -87.3), so this skips work
    // and memory traffic without changing a bit: with sources of 32-256 tokens a row read
    // on average ~40% more cross K|V than its own (t5-small shape, 128 inputs).
    std::vector<int64_t> src_len(s1 - s0);
    for (int64_t s = s0; s < s1; ++s) {
      const float* b = cbias + s * cap;
      int64_t w = src_w;
      while (w > 0 && b[w - 1] < -1e30f) --w;
      src_len[s - s0] = w > 0 ? w : src_w;  // all masked (no input): as before
    }
    // int8: the row-normalized input of a matmul, plus its anchor row (int8_mm)
    at::Tensor xn = q_.empty() ? at::Tensor() : at::empty({(m + 1) * std::max({D, I, F})}, x.options());
    for (int64_t l = 0; l < layers_; ++l) {
      const at::Tensor* p = w_.data() + l * kPerLayer;
      auto f = [&](int64_t i) { return p[i].data_ptr<float>(); };
      const float e1 = eps_[3 * l], e2 = eps_[3 * l + 1], e3 = eps_[3 * l + 2];
      // self-attention: write this step's K|V at each row's column, attend over [0, self_w)
      const at::Tensor& in1 = pre_ ? h : x;
      if (pre_) norm_rows(hp, f(0), f(1), e1);
      matmul(qkv, in1, p[2], l, 0, xn, &p[3]);
      float* qp = qkv.data_ptr<float>();
      float* cache = caches[l].data_ptr<float>();
      // this layer's relative bias table (UMT5: its own; T5: the shared one)
      const float* rl = relp == nullptr ? nullptr : relp + (rel_tables > 1 ? l : 0) * H * (2 * T - 1);
      rows(1, [&](int64_t a, int64_t e) {
        std::vector<float> scores(most);
        for (int64_t r = a; r < e; ++r) {
          float* row = cache + (r0 + r) * T * 2 * I;
          std::memcpy(row + age[r] * 2 * I, qp + r * 3 * I + I, sizeof(float) * 2 * I);
          for (int64_t hh = 0; hh < H; ++hh)
            attend(qp + r * 3 * I + hh * d, row + hh * d, row + I + hh * d, 2 * I, sbias + (r0 + r) * T,
                   rl == nullptr ? nullptr : rl + hh * (2 * T - 1) + (T - 1 - age[r]), std::min(self_w, age[r] + 1),
                   d, ap + r * I + hh * d, scores.data());
        }
      });
      matmul(proj, att, p[4], l, 1, xn, nullptr);  // its bias goes in with the residual
      pp = proj.data_ptr<float>();
      residual_rows(f(5), f(0), f(1), e1);
      // cross-attention: a slot's rows share its source K|V
      if (pre_) norm_rows(hp, f(6), f(7), e2);
      matmul(cq, pre_ ? h : x, p[8], l, 2, xn, &p[9]);
      float* cqp = cq.data_ptr<float>();
      const float* cross = crosses[l].data_ptr<float>();
      rows(1, [&](int64_t a, int64_t e) {
        std::vector<float> scores(most);
        for (int64_t r = a; r < e; ++r) {
          const int64_t slot = (r0 + r) / group;
          const float* src = cross + slot * cap * 2 * I;
          for (int64_t hh = 0; hh < H; ++hh)
            attend(cqp + r * I + hh * d, src + hh * d, src + I + hh * d, 2 * I, cbias + slot * cap, nullptr,
                   src_len[slot - s0], d, ap + r * I + hh * d, scores.data());
        }
      });
      matmul(proj, att, p[10], l, 3, xn, nullptr);
      pp = proj.data_ptr<float>();
      residual_rows(f(11), f(6), f(7), e2);
      // feed-forward
      if (pre_) norm_rows(hp, f(12), f(13), e3);
      matmul(ff, pre_ ? h : x, p[14], l, 4, xn, &p[15]);
      if (gated_) {
        // T5 v1.1: gate = act(first half) * second half, row by row
        float* fp = ff.data_ptr<float>();
        float* gp = gate.data_ptr<float>();
        rows(4, [&](int64_t r0_, int64_t r1_) {
          for (int64_t r = r0_; r < r1_; ++r) {
            float* a = fp + r * 2 * F;
            activate(a, F);
            const float* b = a + F;
            float* g = gp + r * F;
#pragma omp simd
            for (int64_t i = 0; i < F; ++i) g[i] = a[i] * b[i];
          }
        });
      } else {
        float* fp = ff.data_ptr<float>();
        const int64_t width = ff.size(1);
        rows(4, [&](int64_t a, int64_t e) { activate(fp + a * width, (e - a) * width); });
      }
      matmul(proj, gated_ ? gate : ff, p[16], l, 5, xn, nullptr);
      pp = proj.data_ptr<float>();
      residual_rows(f(17), f(12), f(13), e3);
    }
  }

  // out = in @ W.T (+ bias, when given): oneDNN's linear on the layer's prepacked weight
  // `which` (0 qkv, 1 self_out, 2 cross_q, 3 cross_out, 4 fc1, 5 fc2), with the bias in
  // its epilogue; else ATen's float32 matmul (w: the [in, out] view) or int8_mm, then the
  // bias. The oneDNN op has no out= form: `out` is rebound to the tensor it returns (a
  // copy into the old buffer cost a pass over every output), so callers re-read its data
  // pointer after each call.
  void matmul(at::Tensor& out, const at::Tensor& in, const at::Tensor& w, int64_t layer, int64_t which,
              at::Tensor& xn, const at::Tensor* bias) const {
    if (!p_.empty()) {
      static const auto op = c10::Dispatcher::singleton()
          .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
          .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                            c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>();
      out = op.call(in, p_[layer * 6 + which], bias != nullptr ? std::optional<at::Tensor>(*bias) : std::nullopt,
                    "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
      return;
    }
    if (q_.empty()) {
      at::mm_out(out, in, w);
    } else {
      const int64_t m = in.size(0), k = in.size(1);
      at::Tensor buf = xn.narrow(0, 0, (m + 1) * k).view({m + 1, k});
      int8_mm(out, in, q_[layer * 6 + which], buf);
    }
    if (bias != nullptr) add_bias(out.data_ptr<float>(), bias->data_ptr<float>(), out.size(0), out.size(1));
  }

  // The activation in place on n contiguous floats.
  void activate(float* y, int64_t n) const {
    switch (act_) {
      case kGelu: {
        at::Tensor t = at::from_blob(y, {n}, at::TensorOptions().dtype(at::kFloat));
        at::gelu_(t);
        break;
      }
      case kGeluTanh: gelu_tanh(y, n); break;
      case kRelu:
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) y[i] = y[i] < 0.0f ? 0.0f : y[i];  // NaN stays NaN, as in torch.relu
        break;
      default: silu(y, n); break;
    }
  }

  std::vector<at::Tensor> w_;
  std::vector<at::Tensor> p_;  // oneDNN prepacked float32 weights, 6 a layer (or none)
  std::vector<c10::intrusive_ptr<LinearPackedParamsBase>> q_;  // int8 packed weights, 6 a layer (or none)
  std::vector<float> eps_;
  int64_t layers_ = 0, hidden_ = 0, inner_ = 0, heads_, act_;
  bool pre_, rms_, gated_;
};

// Greedy search's token choice for rows [0, N), the engine's _token_step when no logits
// processor applies and there is one EOS id (core.py): per row the first index of the
// largest logit (torch.argmax's tie order; a NaN wins, as there), its log-softmax
// written at the row's column of step_logp, the token appended to hist and staged in
// tok_in, and the row moved one position on (age, pos_in; with padding_idx >= 0 the
// RoBERTa-style position). Returns which rows ended (EOS or the last length). In torch
// this was ~12 ops on a [rows, vocab] tensor a step, a fifth of a small model's step.
at::Tensor greedy_pick(const at::Tensor& logits, at::Tensor step_logp, at::Tensor hist, at::Tensor age,
                       at::Tensor tok_in, at::Tensor pos_in, int64_t eos, int64_t last_len, int64_t padding_idx) {
  TORCH_CHECK(logits.dim() == 2 && logits.is_contiguous() && logits.scalar_type() == at::kFloat, "greedy_pick: logits");
  const int64_t N = logits.size(0), V = logits.size(1);
  const int64_t T = step_logp.size(1);
  TORCH_CHECK(step_logp.is_contiguous() && step_logp.scalar_type() == at::kFloat && step_logp.size(0) >= N, "greedy_pick: step_logp");
  TORCH_CHECK(hist.is_contiguous() && hist.scalar_type() == at::kLong && hist.size(0) >= N && hist.size(1) == T + 1, "greedy_pick: hist");
  for (const auto* t : {&age, &tok_in, &pos_in})
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == at::kLong && t->size(0) >= N, "greedy_pick: age/tok_in/pos_in");
  at::Tensor ends = at::empty({N}, logits.options().dtype(at::kBool));
  const float* lg = logits.data_ptr<float>();
  float* lp = step_logp.data_ptr<float>();
  int64_t* hs = hist.data_ptr<int64_t>();
  int64_t* ag = age.data_ptr<int64_t>();
  int64_t* tk = tok_in.data_ptr<int64_t>();
  int64_t* ps = pos_in.data_ptr<int64_t>();
  bool* en = ends.data_ptr<bool>();
  check_columns(ag, N, T, "greedy_pick");
  at::parallel_for(0, N, std::max<int64_t>(1, 32768 / std::max<int64_t>(V, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = lg + r * V;
      int64_t best = 0;
      float mx = x[0];
      bool nan = std::isnan(mx);
      for (int64_t v = 1; v < V && !nan; ++v) {
        if (std::isnan(x[v])) { best = v; mx = x[v]; nan = true; }
        else if (x[v] > mx) { best = v; mx = x[v]; }
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t v = 0; v < V; ++v) sum += fast_exp(x[v] - mx);
      const int64_t a = ag[r];
      lp[r * T + a] = nan ? mx : -std::log(sum);  // log_softmax of the largest logit
      hs[r * (T + 1) + a + 1] = best;
      en[r] = best == eos || a + 1 >= last_len;
      tk[r] = best;
      ag[r] = a + 1;
      ps[r] = padding_idx < 0 ? ps[r] + 1 : (best != padding_idx ? a + 1 + padding_idx + 1 : padding_idx);
    }
  });
  return ends;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<Layers>(m, "Layers")
      .def(pybind11::init<std::vector<at::Tensor>, std::vector<double>, int64_t, int64_t, bool, bool, bool>())
      .def("set_int8", &Layers::set_int8)
      .def("set_packed", &Layers::set_packed)
      // Tensors only inside: other Python threads (Ray's, a data loader's) run meanwhile.
      .def("run", &Layers::run, pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("greedy_pick", &greedy_pick);
}
