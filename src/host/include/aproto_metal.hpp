// The Metal Shading Language standard library, emulated in C++ for the host backend.
// Kernel sources are translated (src/host/translate.cpp) and compiled with clang against this header:
// vector types are clang ext_vector_types (swizzles for free), `half` is _Float16, `bfloat` is __bf16.
// Everything that needs the other GPU threads (barriers, SIMD operations, threadgroup memory) calls
// the runtime through the C table in aproto_kernel_abi.h. Header-only on purpose: a kernel library
// links no C++ runtime, so any clang (system or the ziglang wheel) can build it. No <cmath>: MSL has no
// global C math functions, and kernels define their own `erf`, `log1p`, ...
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "aproto_kernel_abi.h"

// ------------------------------------------------------------------------------------ scalar types
typedef _Float16 half;
typedef __bf16 bfloat;
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef uint64_t ulong;

template <class T, int N> using aproto_vec = T __attribute__((ext_vector_type(N)));
#define APROTO_VEC_TYPES(T, P) \
  typedef aproto_vec<T, 2> P##2; typedef aproto_vec<T, 3> P##3; typedef aproto_vec<T, 4> P##4;
APROTO_VEC_TYPES(float, float) APROTO_VEC_TYPES(half, half) APROTO_VEC_TYPES(bfloat, bfloat)
APROTO_VEC_TYPES(int, int) APROTO_VEC_TYPES(uint, uint) APROTO_VEC_TYPES(short, short)
APROTO_VEC_TYPES(ushort, ushort) APROTO_VEC_TYPES(char, char) APROTO_VEC_TYPES(uchar, uchar)
APROTO_VEC_TYPES(bool, bool) APROTO_VEC_TYPES(long, long) APROTO_VEC_TYPES(ulong, ulong)
#undef APROTO_VEC_TYPES
// packed_T2 / packed_T4: the same vectors aligned like their scalar (so they pack in structs and
// buffers); packed_T3 is 3 scalars (12 bytes for float, where float3 takes 16), with element access.
#define APROTO_PACKED_TYPES(T, P)                                                     \
  typedef T packed_##P##2 __attribute__((ext_vector_type(2), aligned(sizeof(T))));    \
  typedef T packed_##P##4 __attribute__((ext_vector_type(4), aligned(sizeof(T))));    \
  struct packed_##P##3 {                                                              \
    T x, y, z;                                                                        \
    packed_##P##3() = default;                                                        \
    packed_##P##3(T a, T b, T c) : x(a), y(b), z(c) {}                                \
    packed_##P##3(aproto_vec<T, 3> v) : x(v.x), y(v.y), z(v.z) {}                     \
    operator aproto_vec<T, 3>() const { return aproto_vec<T, 3>{x, y, z}; }          \
    T& operator[](int i) { return (&x)[i]; }                                          \
    const T& operator[](int i) const { return (&x)[i]; }                              \
  };
APROTO_PACKED_TYPES(float, float) APROTO_PACKED_TYPES(half, half) APROTO_PACKED_TYPES(bfloat, bfloat)
APROTO_PACKED_TYPES(int, int) APROTO_PACKED_TYPES(uint, uint) APROTO_PACKED_TYPES(short, short)
APROTO_PACKED_TYPES(ushort, ushort) APROTO_PACKED_TYPES(char, char) APROTO_PACKED_TYPES(uchar, uchar)
APROTO_PACKED_TYPES(long, long) APROTO_PACKED_TYPES(ulong, ulong)
#undef APROTO_PACKED_TYPES

namespace aproto_rt {
inline const aproto_runtime* g_rt = nullptr;

template <class T> struct vinfo { static constexpr int n = 1; using elem = T; };
template <class T, int N> struct vinfo<aproto_vec<T, N>> { static constexpr int n = N; using elem = T; };
template <class T> using bare = std::remove_cv_t<std::remove_reference_t<T>>;
template <class T> constexpr bool is_vec = vinfo<bare<T>>::n > 1;

inline const aproto_thread_pos& pos() { return *g_rt->current(); }
inline uint32_t lane() { return pos().thread_index_in_simdgroup[0]; }
[[noreturn]] inline void fail(const char* msg) { g_rt->fail(msg); __builtin_unreachable(); }
// The value of a function constant. Deliberately not constexpr: Metal compiles a library before the
// values exist, so a function constant cannot size an array there, and the host refuses it too.
template <class T> inline T function_constant(T value) { return value; }

// A thread-position attribute as the parameter type the kernel declared (scalar takes [0]).
template <class T> inline T position(const uint32_t* v) {
  using U = bare<T>;
  if constexpr (is_vec<U>) {
    U r;
    for (int i = 0; i < vinfo<U>::n; i++) r[i] = (typename vinfo<U>::elem)v[i];
    return r;
  } else {
    return (U)v[0];
  }
}

// The parameter types of a kernel, read from its function type (the generated entry point binds
// plain kernels and template instances alike through them).
template <class F> struct kernel_fn;
template <class... A> struct kernel_fn<void (*)(A...)> {
  template <unsigned I> using arg = __type_pack_element<I, A...>;
};
}  // namespace aproto_rt

namespace metal {
// visible_function_table<F>: the functions a dispatch chose, called by index (an index past the end is
// undefined behaviour on Metal; the host stops the dispatch and says so).
template <class F> struct visible_function_table {
  F* const* entries = nullptr;
  uint64_t count = 0;
  F* operator[](uint32_t i) const {
    if (i >= count) ::aproto_rt::g_rt->fail("visible_function_table index out of range");
    return entries[i];
  }
  uint32_t size() const { return uint32_t(count); }
  bool empty() const { return count == 0; }
};
}  // namespace metal

namespace aproto_rt {
template <class P> struct function_table_of { using fn = void; };
template <class F> struct function_table_of<::metal::visible_function_table<F>> { using fn = F; };
template <class P> constexpr bool is_function_table = !std::is_void_v<typename function_table_of<P>::fn>;
// Does a function of pointer type FP fit the table parameter P (the same signature)?
template <class P, class FP> constexpr int table_fits() {
  if constexpr (is_function_table<P>) return std::is_same_v<typename function_table_of<P>::fn*, FP> ? 1 : 0;
  else return 0;
}

// A `T*` / `T&` buffer parameter bound to a buffer's address; a visible_function_table to the
// aproto_function_table the dispatch filled.
template <class P> using pointee = std::remove_pointer_t<std::remove_reference_t<P>>;
template <class P> inline P buffer_arg(void* p) {
  if constexpr (is_function_table<P>) {
    const auto* t = static_cast<const aproto_function_table*>(p);
    return P{reinterpret_cast<typename function_table_of<P>::fn* const*>(t->entries), t->count};
  } else if constexpr (std::is_reference_v<P>) {
    return *static_cast<pointee<P>*>(p);
  } else {
    return static_cast<P>(p);
  }
}
template <class P> constexpr uint64_t buffer_min_bytes() {  // sizeof(T) for `constant T&`, 0 for pointers
  if constexpr (is_function_table<P>) return sizeof(aproto_function_table);
  else if constexpr (std::is_reference_v<P>) return sizeof(pointee<P>);
  else return 0;
}
template <class P> constexpr uint64_t buffer_align() {  // what the buffer's address must be a multiple of
  if constexpr (is_function_table<P>) return alignof(aproto_function_table);
  else if constexpr (std::is_void_v<std::remove_cv_t<pointee<P>>>) return 1;
  else return alignof(pointee<P>);
}
template <class P> constexpr int buffer_readonly() {
  if constexpr (is_function_table<P>) return 1;
  else return std::is_const_v<pointee<P>> ? 1 : 0;
}
// A parameter its [[function_constant(c)]] leaves out: a null pointer, or a reference to zeros.
template <class P> inline P absent_arg() {
  if constexpr (std::is_reference_v<P>) {
    alignas(64) static unsigned char zeros[sizeof(pointee<P>) < 64 ? 64 : sizeof(pointee<P>)] = {};
    return *reinterpret_cast<pointee<P>*>(zeros);
  } else {
    return nullptr;
  }
}

// Storage of `threadgroup T name[dims];` (the translator rewrites the declaration into this).
// Align: an `alignas(n)` on the declaration (n below alignof(T) is ignored, as C++ does for over-alignment)
template <class T, size_t Align = alignof(T)> inline T& threadgroup_variable(uint32_t index, const char* name) {
  constexpr size_t align = Align > alignof(T) ? Align : alignof(T);
  return *static_cast<T*>(g_rt->threadgroup_variable(index, sizeof(T), align, name));
}
inline void* threadgroup_argument(uint32_t index) { return g_rt->threadgroup_argument(index); }

// Every taking-part lane deposits `v`; returns the 32 slots and the mask of lanes that took part.
__attribute__((noinline, convergent)) inline const unsigned char* exchange_bytes(
    const void* v, uint32_t size, uint32_t& mask, aproto_site site, uint32_t flags, const char* what) {
  return g_rt->simd_exchange(v, size, site, flags, what, &mask);
}
template <class T>
inline const unsigned char* exchange(const T& v, uint32_t& mask, aproto_site site, uint32_t flags, const char* what) {
  static_assert(sizeof(T) <= APROTO_SIMD_SLOT_BYTES, "value too large for one SIMD exchange");
  return exchange_bytes(&v, sizeof(T), mask, site, flags, what);
}
__attribute__((noinline, convergent)) inline void barrier(aproto_site site) { g_rt->threadgroup_barrier(site); }
template <class T> inline T slot(const unsigned char* slots, uint32_t lane) {
  T t;
  __builtin_memcpy(&t, slots + lane * APROTO_SIMD_SLOT_BYTES, sizeof(T));
  return t;
}
}  // namespace aproto_rt

namespace aproto_rt {
// Hash of the return addresses from the caller up to the kernel's entry. Its first address is the call
// itself (distinct for every inlined copy of a helper); the frame-pointer chain (kernels are built with
// -fno-omit-frame-pointer) adds the call sites of non-inlined helpers. Frames are followed only inside
// the fiber's stack, upwards.
// convergent (like every call below that meets other lanes): the optimiser must not merge the calls
// of two divergent branches into one, which would merge their sites.
__attribute__((noinline, convergent)) inline uint64_t call_context() {
  const aproto_thread_pos& p = pos();
  uint64_t h = (uint64_t)(uintptr_t)__builtin_return_address(0);
  uintptr_t fp = (uintptr_t)__builtin_frame_address(0);
  for (int depth = 0; depth < 64; depth++) {
    uintptr_t next = *(const uintptr_t*)fp;  // the caller's frame
    if (next <= fp || next < p.stack_low || next + 2 * sizeof(void*) > p.stack_high) break;
    h = (h ^ *(const uintptr_t*)(next + sizeof(void*))) * 1099511628211ull;
    fp = next;
  }
  return h;
}
}  // namespace aproto_rt

// A defaulted last parameter of every barrier and SIMD function: evaluated where the kernel calls it.
#define APROTO_SITE                                                                                  \
  aproto_site __site = aproto_site {                                                                  \
    __builtin_FILE(), __builtin_LINE(), __builtin_COLUMN(), ::aproto_rt::call_context()               \
  }

// ------------------------------------------------------------------------------------ metal::
namespace metal {
using aproto_rt::vinfo;
template <class T, int N> using vec = aproto_vec<T, N>;

// Vector construction with MSL semantics: float4(x) splats, float4(a.xy, z, w) concatenates,
// float4(half4) converts element-wise. The translator rewrites `float4(...)` into vmake<float4>(...).
template <class V, class... A> inline V vmake(A... a) {
  using E = typename vinfo<V>::elem;
  constexpr int N = vinfo<V>::n;
  if constexpr (sizeof...(A) == 0) {
    return (V)(E)0;
  } else if constexpr (sizeof...(A) == 1 && ((vinfo<A>::n == 1) && ...)) {
    return (V)(E)(a, ...);
  } else {
    static_assert((vinfo<A>::n + ...) == N, "vector constructor: the component count does not match");
    V r;
    int k = 0;
    auto put = [&](auto x) {
      using X = decltype(x);
      if constexpr (vinfo<X>::n == 1) {
        r[k++] = (E)x;
      } else {
        static_assert(sizeof...(A) == 1 || std::is_same_v<typename vinfo<X>::elem, E>,
                      "MSL has no implicit conversion between vector types: convert the vector argument first, "
                      "e.g. float4(float2(h.xy), 0, 1)");
        for (int i = 0; i < vinfo<X>::n; i++) r[k++] = (E)x[i];
      }
    };
    (put(a), ...);
    return r;
  }
}
// static_cast<float4>(v) and (float4)v are conversions in MSL but bit casts on clang vectors;
// the translator rewrites both into convert<float4>(v).
template <class V, class A> inline V convert(A a) {
  if constexpr (aproto_rt::is_vec<A> && !std::is_same_v<typename vinfo<A>::elem, bool>) return __builtin_convertvector(a, V);
  else return vmake<V>(a);
}
// A comparison with MSL's values, 1 / 0 (clang's vector comparisons give -1 / 0 masks). The translator
// wraps comparisons that are converted, so float4(a > b) gives 1 / 0. An integer vector, not a bool
// one: clang miscompiles bool vectors at -O2.
template <class T> inline auto msl_bool(T v) {
  if constexpr (aproto_rt::is_vec<T>) {
    T r;
    for (int i = 0; i < vinfo<T>::n; i++) r[i] = v[i] != 0 ? 1 : 0;
    return r;
  } else {
    return (bool)v;
  }
}
// half <-> bfloat converts in MSL; clang refuses the cast, so it goes through float (exact: float
// holds both).
template <class T, class A> constexpr bool half_bfloat_pair =
    (std::is_same_v<T, half> && std::is_same_v<aproto_rt::bare<A>, bfloat>) ||
    (std::is_same_v<T, bfloat> && std::is_same_v<aproto_rt::bare<A>, half>);
// (T)a where T is a template parameter: vector rules for a vector T, C's otherwise.
template <class T, class A> constexpr T msl_convert(A a) {
  if constexpr (aproto_rt::is_vec<T>) return convert<T>(a);
  else if constexpr (half_bfloat_pair<T, A>) return (T)(float)a;
  else return (T)a;
}
// static_cast<T>(a) for a T that is no vector type name.
template <class T, class A> constexpr T msl_static_cast(A a) {
  if constexpr (aproto_rt::is_vec<T>) return convert<T>(a);
  else if constexpr (half_bfloat_pair<T, A>) return static_cast<T>(static_cast<float>(a));
  else return static_cast<T>(a);
}
// T(args) where T is a template parameter. Arguments by value: a vector element (`x[j]`) is an lvalue
// no non-const reference can bind to, and MSL's constructors take values anyway.
template <class T, class... A> constexpr T msl_make(A... a) {
  if constexpr (aproto_rt::is_vec<T>) return vmake<T>(a...);
  else if constexpr (sizeof...(A) == 1) return msl_convert<T>(a...);
  else return T(a...);
}
template <class To, class From> inline To as_type(From f) {
  static_assert(sizeof(To) == sizeof(From), "as_type: sizes differ");
  return __builtin_bit_cast(To, f);
}

// ---- math: float, half and bfloat scalars (computed in float), and element-wise on vectors
template <class T> using if_scalar_float =
    std::enable_if_t<std::is_same_v<T, float> || std::is_same_v<T, half> || std::is_same_v<T, bfloat>, T>;
#define APROTO_UNARY(name, expr)                                                              \
  template <class T> inline if_scalar_float<T> name(T v) { float x = (float)v; return (T)(expr); } \
  template <class T, int N> inline vec<T, N> name(vec<T, N> v) {                          \
    for (int i = 0; i < N; i++) v[i] = name(v[i]);                                         \
    return v;                                                                              \
  }
APROTO_UNARY(exp, __builtin_expf(x)) APROTO_UNARY(exp2, __builtin_exp2f(x))
APROTO_UNARY(exp10, __builtin_powf(10.0f, x)) APROTO_UNARY(log, __builtin_logf(x))
APROTO_UNARY(log2, __builtin_log2f(x)) APROTO_UNARY(log10, __builtin_log10f(x))
APROTO_UNARY(sqrt, __builtin_sqrtf(x)) APROTO_UNARY(rsqrt, 1.0f / __builtin_sqrtf(x))
APROTO_UNARY(fabs, __builtin_fabsf(x)) APROTO_UNARY(floor, __builtin_floorf(x))
APROTO_UNARY(ceil, __builtin_ceilf(x)) APROTO_UNARY(round, __builtin_roundf(x))
APROTO_UNARY(rint, __builtin_rintf(x)) APROTO_UNARY(trunc, __builtin_truncf(x))
APROTO_UNARY(fract, x - __builtin_floorf(x)) APROTO_UNARY(sin, __builtin_sinf(x))
APROTO_UNARY(cos, __builtin_cosf(x)) APROTO_UNARY(tan, __builtin_tanf(x))
APROTO_UNARY(asin, __builtin_asinf(x)) APROTO_UNARY(acos, __builtin_acosf(x))
APROTO_UNARY(atan, __builtin_atanf(x)) APROTO_UNARY(sinh, __builtin_sinhf(x))
APROTO_UNARY(cosh, __builtin_coshf(x)) APROTO_UNARY(tanh, __builtin_tanhf(x))
APROTO_UNARY(saturate, __builtin_fminf(__builtin_fmaxf(x, 0.0f), 1.0f))
APROTO_UNARY(sign, x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : 0.0f))
APROTO_UNARY(asinh, __builtin_asinhf(x)) APROTO_UNARY(acosh, __builtin_acoshf(x))
APROTO_UNARY(atanh, __builtin_atanhf(x))
// sinpi(x) = sin(pi x): the product in double, so large arguments keep their precision
APROTO_UNARY(sinpi, (float)__builtin_sin(3.14159265358979323846 * (double)x))
APROTO_UNARY(cospi, (float)__builtin_cos(3.14159265358979323846 * (double)x))
APROTO_UNARY(tanpi, (float)__builtin_tan(3.14159265358979323846 * (double)x))
#undef APROTO_UNARY
#define APROTO_BINARY(name, expr)                                                               \
  template <class T> inline if_scalar_float<T> name(T a, T b) { float x = (float)a, y = (float)b; return (T)(expr); } \
  template <class T, int N> inline vec<T, N> name(vec<T, N> a, vec<T, N> b) {               \
    for (int i = 0; i < N; i++) a[i] = name(a[i], b[i]);                                     \
    return a;                                                                                \
  }
APROTO_BINARY(pow, __builtin_powf(x, y)) APROTO_BINARY(powr, __builtin_powf(x, y))
APROTO_BINARY(atan2, __builtin_atan2f(x, y)) APROTO_BINARY(fmod, __builtin_fmodf(x, y))
APROTO_BINARY(copysign, __builtin_copysignf(x, y)) APROTO_BINARY(divide, x / y)
APROTO_BINARY(step, y < x ? 0.0f : 1.0f)
APROTO_BINARY(nextafter, __builtin_nextafterf(x, y))
#undef APROTO_BINARY
template <class T> inline if_scalar_float<T> fma(T a, T b, T c) { return (T)__builtin_fmaf((float)a, (float)b, (float)c); }
template <class T, int N> inline vec<T, N> fma(vec<T, N> a, vec<T, N> b, vec<T, N> c) {
  for (int i = 0; i < N; i++) a[i] = fma(a[i], b[i], c[i]);
  return a;
}
// abs, min, max, clamp work on integers too.
template <class T> inline std::enable_if_t<!aproto_rt::is_vec<T>, T> abs(T v) { return v < T(0) ? T(-v) : v; }
template <class T, int N> inline vec<T, N> abs(vec<T, N> v) { for (int i = 0; i < N; i++) v[i] = abs(v[i]); return v; }
template <class T> inline std::enable_if_t<!aproto_rt::is_vec<T>, T> max(T a, T b) { return a > b ? a : b; }
template <class T> inline std::enable_if_t<!aproto_rt::is_vec<T>, T> min(T a, T b) { return a < b ? a : b; }
template <class T, int N> inline vec<T, N> max(vec<T, N> a, vec<T, N> b) { for (int i = 0; i < N; i++) a[i] = max(a[i], b[i]); return a; }
template <class T, int N> inline vec<T, N> min(vec<T, N> a, vec<T, N> b) { for (int i = 0; i < N; i++) a[i] = min(a[i], b[i]); return a; }
// fmax/fmin ignore a NaN operand, as IEEE maxNum does.
template <class T> inline if_scalar_float<T> fmax(T a, T b) { return (T)__builtin_fmaxf((float)a, (float)b); }
template <class T> inline if_scalar_float<T> fmin(T a, T b) { return (T)__builtin_fminf((float)a, (float)b); }
template <class T, int N> inline vec<T, N> fmax(vec<T, N> a, vec<T, N> b) { for (int i = 0; i < N; i++) a[i] = fmax(a[i], b[i]); return a; }
template <class T, int N> inline vec<T, N> fmin(vec<T, N> a, vec<T, N> b) { for (int i = 0; i < N; i++) a[i] = fmin(a[i], b[i]); return a; }
// A scalar beside a vector is splat, and an integer beside a float type takes that type, as MSL's
// overloads do for fmax(0, x) with x a float4 (or a float).
template <class A, class B> constexpr bool int_beside_float =
    std::is_integral_v<A> && !std::is_integral_v<B> && !aproto_rt::is_vec<B> && !std::is_same_v<A, bool>;
#define APROTO_MIXED(name)                                                                               \
  template <class T, int N, class S, std::enable_if_t<!aproto_rt::is_vec<S>, int> = 0>                    \
  inline auto name(vec<T, N> a, S b) -> decltype(name(a, a)) { return name(a, (vec<T, N>)(T)b); }         \
  template <class T, int N, class S, std::enable_if_t<!aproto_rt::is_vec<S>, int> = 0>                    \
  inline auto name(S a, vec<T, N> b) -> decltype(name(b, b)) { return name((vec<T, N>)(T)a, b); }         \
  template <class A, class B, std::enable_if_t<int_beside_float<A, B>, int> = 0>                          \
  inline auto name(A a, B b) -> decltype(name(b, b)) { return name((B)a, b); }                           \
  template <class A, class B, std::enable_if_t<int_beside_float<B, A>, int> = 0>                          \
  inline auto name(A a, B b) -> decltype(name(a, a)) { return name(a, (A)b); }
APROTO_MIXED(fmax) APROTO_MIXED(fmin) APROTO_MIXED(max) APROTO_MIXED(min) APROTO_MIXED(pow) APROTO_MIXED(powr)
APROTO_MIXED(atan2) APROTO_MIXED(fmod) APROTO_MIXED(copysign) APROTO_MIXED(step)
#undef APROTO_MIXED
template <class T, class L> inline T clamp(T x, L lo, L hi) { return min(max(x, (T)lo), (T)hi); }
// Three-operand forms (MSL 2.1): fmax3 / fmin3 ignore NaNs as fmax does; median3 is the middle value.
template <class T> inline T fmax3(T a, T b, T c) { return fmax(fmax(a, b), c); }
template <class T> inline T fmin3(T a, T b, T c) { return fmin(fmin(a, b), c); }
template <class T> inline T fmedian3(T a, T b, T c) { return fmax(fmin(a, b), fmin(fmax(a, b), c)); }
template <class T> inline T max3(T a, T b, T c) { return max(max(a, b), c); }
template <class T> inline T min3(T a, T b, T c) { return min(min(a, b), c); }
template <class T> inline T median3(T a, T b, T c) { return max(min(a, b), min(max(a, b), c)); }
template <class T> inline if_scalar_float<T> ldexp(T x, int k) { return (T)__builtin_ldexpf((float)x, k); }
template <class T> inline if_scalar_float<T> frexp(T x, int& e) { return (T)__builtin_frexpf((float)x, &e); }
template <class T, class U> inline T mix(T a, T b, U t) { return a + (b - a) * t; }
template <class T> inline bool isnan(T v) { return __builtin_isnan((float)v); }
template <class T> inline bool isinf(T v) { return __builtin_isinf((float)v); }
template <class T> inline bool isfinite(T v) { return __builtin_isfinite((float)v); }
template <class T> inline bool signbit(T v) { return __builtin_signbit((float)v); }
template <class T, int N> inline T dot(vec<T, N> a, vec<T, N> b) {
  float s = 0.0f;
  for (int i = 0; i < N; i++) s += (float)a[i] * (float)b[i];
  return (T)s;
}
template <class T, int N> inline T length(vec<T, N> a) { return (T)__builtin_sqrtf((float)dot(a, a)); }
template <class T, int N> inline vec<T, N> normalize(vec<T, N> a) { return a / length(a); }
template <class V> inline bool all(V v) { for (int i = 0; i < vinfo<V>::n; i++) if (!v[i]) return false; return true; }
template <class V> inline bool any(V v) { for (int i = 0; i < vinfo<V>::n; i++) if (v[i]) return true; return false; }
template <class T> inline std::enable_if_t<!aproto_rt::is_vec<T>, T> select(T a, T b, bool c) { return c ? b : a; }
template <class T, int N, class M> inline vec<T, N> select(vec<T, N> a, vec<T, N> b, M c) {
  for (int i = 0; i < N; i++) a[i] = c[i] ? b[i] : a[i];
  return a;
}
// Bit counts of an integer of T's width (the result has T's type, as in MSL).
template <class T> inline std::enable_if_t<std::is_integral_v<T>, T> popcount(T v) {
  return (T)__builtin_popcountll((unsigned long long)(std::make_unsigned_t<T>)v);
}
template <class T> inline std::enable_if_t<std::is_integral_v<T>, T> ctz(T v) {
  auto u = (unsigned long long)(std::make_unsigned_t<T>)v;
  return (T)(u ? __builtin_ctzll(u) : 8 * sizeof(T));
}
template <class T> inline std::enable_if_t<std::is_integral_v<T>, T> clz(T v) {
  auto u = (unsigned long long)(std::make_unsigned_t<T>)v;
  return (T)(u ? __builtin_clzll(u) - (64 - 8 * (int)sizeof(T)) : 8 * sizeof(T));
}
// The high half of the full product.
template <class T> inline std::enable_if_t<std::is_integral_v<T>, T> mulhi(T a, T b) {
  if constexpr (sizeof(T) == 8) {
    using W = std::conditional_t<std::is_signed_v<T>, __int128, unsigned __int128>;
    return (T)(((W)a * (W)b) >> 64);
  } else {
    using W = std::conditional_t<std::is_signed_v<T>, int64_t, uint64_t>;
    return (T)(((W)a * (W)b) >> (8 * sizeof(T)));
  }
}
// fast:: and precise:: name the same functions here: the host computes in IEEE float either way.
// Using-declarations, not a using-directive: a header that adds its own overloads to metal::fast
// (MLX adds bfloat ones) must extend this overload set, not hide it.
#define APROTO_MATH_NAMES(X)                                                                                \
  X(exp) X(exp2) X(exp10) X(log) X(log2) X(log10) X(sqrt) X(rsqrt) X(fabs) X(floor) X(ceil) X(round) X(rint) \
  X(trunc) X(fract) X(sin) X(cos) X(tan) X(asin) X(acos) X(atan) X(sinh) X(cosh) X(tanh) X(asinh) X(acosh) \
  X(atanh) X(sinpi) X(cospi) X(tanpi) X(saturate) X(sign) X(pow) X(powr) X(atan2) X(fmod) X(copysign)       \
  X(divide) X(step) X(nextafter) X(fma) X(abs) X(max) X(min) X(fmax) X(fmin) X(fmax3) X(fmin3) X(fmedian3)   \
  X(max3) X(min3) X(median3) X(clamp) X(mix) X(ldexp) X(frexp) X(isnan) X(isinf) X(isfinite) X(signbit)    \
  X(dot) X(length) X(normalize)
#define APROTO_USING(name) using ::metal::name;
namespace fast { APROTO_MATH_NAMES(APROTO_USING) }
namespace precise { APROTO_MATH_NAMES(APROTO_USING) }
#undef APROTO_USING

template <class T> struct numeric_limits : std::numeric_limits<T> {};
template <> struct numeric_limits<half> {
  static constexpr half max() { return (half)65504.0f; }
  static constexpr half lowest() { return (half)-65504.0f; }
  static constexpr half min() { return (half)6.103515625e-05f; }
  static constexpr half epsilon() { return (half)0.0009765625f; }
  static constexpr half infinity() { return (half)__builtin_inff(); }
  static constexpr half quiet_NaN() { return (half)__builtin_nanf(""); }
  static constexpr bool has_infinity = true;
};
template <> struct numeric_limits<bfloat> {
  static constexpr bfloat max() { return __builtin_bit_cast(bfloat, (uint16_t)0x7F7F); }
  static constexpr bfloat lowest() { return __builtin_bit_cast(bfloat, (uint16_t)0xFF7F); }
  static constexpr bfloat min() { return __builtin_bit_cast(bfloat, (uint16_t)0x0080); }
  static constexpr bfloat epsilon() { return __builtin_bit_cast(bfloat, (uint16_t)0x3C00); }
  static constexpr bfloat infinity() { return __builtin_bit_cast(bfloat, (uint16_t)0x7F80); }
  static constexpr bfloat quiet_NaN() { return __builtin_bit_cast(bfloat, (uint16_t)0x7FC0); }
  static constexpr bool has_infinity = true;
};

// ---- barriers
enum class mem_flags : uint32_t {
  mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4, mem_threadgroup_imageblock = 8, mem_object_data = 16
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(uint32_t(a) | uint32_t(b)); }
inline void threadgroup_barrier(mem_flags = mem_flags::mem_none, APROTO_SITE) { aproto_rt::barrier(__site); }
inline void simdgroup_barrier(mem_flags = mem_flags::mem_none, APROTO_SITE) {
  uint32_t m;
  aproto_rt::exchange(0, m, __site, APROTO_SIMD_ALL_LANES, "simdgroup_barrier");
}

// ---- SIMD-group functions: they act on the lanes that reach them together (the active lanes).
#define APROTO_SIMD_REDUCE(name, op)                                                            \
  template <class T> inline T name(T v, APROTO_SITE) {                                          \
    uint32_t m;                                                                                 \
    const unsigned char* d = aproto_rt::exchange(v, m, __site, 0, #name);                       \
    T vals[APROTO_SIMD_WIDTH];                                                                  \
    int n = 0;                                                                                  \
    for (uint32_t l = 0; l < APROTO_SIMD_WIDTH; l++)                                            \
      if (m >> l & 1) vals[n++] = aproto_rt::slot<T>(d, l);                                     \
    for (int w = 1; w < n; w *= 2) /* pairwise tree, the same on every lane */                  \
      for (int i = 0; i + w < n; i += 2 * w) { T a = vals[i], b = vals[i + w]; vals[i] = (op); } \
    return vals[0];                                                                             \
  }
APROTO_SIMD_REDUCE(simd_sum, a + b)
APROTO_SIMD_REDUCE(simd_product, a * b)
APROTO_SIMD_REDUCE(simd_max, max(a, b))
APROTO_SIMD_REDUCE(simd_min, min(a, b))
APROTO_SIMD_REDUCE(simd_and, a & b)
APROTO_SIMD_REDUCE(simd_or, a | b)
APROTO_SIMD_REDUCE(simd_xor, a ^ b)
#undef APROTO_SIMD_REDUCE

#define APROTO_SIMD_PREFIX(name, op, inclusive)                                                 \
  template <class T> inline T name(T v, APROTO_SITE) {                                          \
    uint32_t m;                                                                                 \
    const unsigned char* d = aproto_rt::exchange(v, m, __site, 0, #name);                       \
    uint32_t me = aproto_rt::lane();                                                            \
    T acc = inclusive ? v : T(op == '*' ? 1 : 0);                                               \
    for (uint32_t l = 0; l < me; l++)                                                           \
      if (m >> l & 1) acc = op == '*' ? acc * aproto_rt::slot<T>(d, l) : acc + aproto_rt::slot<T>(d, l); \
    return acc;                                                                                 \
  }
APROTO_SIMD_PREFIX(simd_prefix_exclusive_sum, '+', false)
APROTO_SIMD_PREFIX(simd_prefix_inclusive_sum, '+', true)
APROTO_SIMD_PREFIX(simd_prefix_exclusive_product, '*', false)
APROTO_SIMD_PREFIX(simd_prefix_inclusive_product, '*', true)
#undef APROTO_SIMD_PREFIX

}  // namespace metal
namespace aproto_rt {  // not metal::detail: kernels declare a `detail` namespace of their own
// Value of lane `src` when it took part, else the caller's own value (undefined in MSL).
template <class T> inline T shuffle_from(T v, uint32_t src, aproto_site site, const char* what) {
  uint32_t m;
  const unsigned char* d = aproto_rt::exchange(v, m, site, 0, what);
  return (src < APROTO_SIMD_WIDTH && (m >> src & 1)) ? aproto_rt::slot<T>(d, src) : v;
}
}  // namespace aproto_rt
namespace metal {
template <class T> inline T simd_shuffle(T v, ushort lane, APROTO_SITE) {
  return aproto_rt::shuffle_from(v, lane, __site, "simd_shuffle");
}
template <class T> inline T simd_broadcast(T v, ushort lane, APROTO_SITE) {
  return aproto_rt::shuffle_from(v, lane, __site, "simd_broadcast");
}
template <class T> inline T simd_shuffle_xor(T v, ushort mask, APROTO_SITE) {
  return aproto_rt::shuffle_from(v, aproto_rt::lane() ^ mask, __site, "simd_shuffle_xor");
}
// Lanes whose source falls outside the SIMD-group keep their own value.
template <class T> inline T simd_shuffle_down(T v, ushort delta, APROTO_SITE) {
  uint32_t me = aproto_rt::lane();
  return aproto_rt::shuffle_from(v, me + delta < APROTO_SIMD_WIDTH ? me + delta : me, __site, "simd_shuffle_down");
}
template <class T> inline T simd_shuffle_up(T v, ushort delta, APROTO_SITE) {
  uint32_t me = aproto_rt::lane();
  return aproto_rt::shuffle_from(v, me >= delta ? me - delta : me, __site, "simd_shuffle_up");
}
template <class T> inline T simd_shuffle_rotate_down(T v, ushort delta, APROTO_SITE) {
  return aproto_rt::shuffle_from(v, (aproto_rt::lane() + delta) % APROTO_SIMD_WIDTH, __site, "simd_shuffle_rotate_down");
}
template <class T> inline T simd_shuffle_rotate_up(T v, ushort delta, APROTO_SITE) {
  return aproto_rt::shuffle_from(v, (aproto_rt::lane() + APROTO_SIMD_WIDTH - delta % APROTO_SIMD_WIDTH) % APROTO_SIMD_WIDTH,
                              __site, "simd_shuffle_rotate_up");
}
template <class T> inline T simd_broadcast_first(T v, APROTO_SITE) {
  uint32_t m;
  const unsigned char* d = aproto_rt::exchange(v, m, __site, 0, "simd_broadcast_first");
  return aproto_rt::slot<T>(d, (uint32_t)__builtin_ctz(m));
}
inline bool simd_all(bool b, APROTO_SITE) {
  uint32_t m;
  const unsigned char* d = aproto_rt::exchange(b, m, __site, 0, "simd_all");
  for (uint32_t l = 0; l < APROTO_SIMD_WIDTH; l++)
    if ((m >> l & 1) && !aproto_rt::slot<bool>(d, l)) return false;
  return true;
}
inline bool simd_any(bool b, APROTO_SITE) {
  uint32_t m;
  const unsigned char* d = aproto_rt::exchange(b, m, __site, 0, "simd_any");
  for (uint32_t l = 0; l < APROTO_SIMD_WIDTH; l++)
    if ((m >> l & 1) && aproto_rt::slot<bool>(d, l)) return true;
  return false;
}
// simd_vote: a bit per lane. Lanes that did not take part read as 0.
struct simd_vote {
  ulong v;
  explicit operator ulong() const { return v; }
  bool all() const { return v == 0xffffffffull; }
  bool any() const { return v != 0; }
};
inline simd_vote simd_ballot(bool b, APROTO_SITE) {
  uint32_t m;
  const unsigned char* d = aproto_rt::exchange(b, m, __site, 0, "simd_ballot");
  ulong bits = 0;
  for (uint32_t l = 0; l < APROTO_SIMD_WIDTH; l++)
    if ((m >> l & 1) && aproto_rt::slot<bool>(d, l)) bits |= 1ull << l;
  return simd_vote{bits};
}
inline simd_vote simd_active_threads_mask(APROTO_SITE) {
  uint32_t m;
  aproto_rt::exchange(0, m, __site, 0, "simd_active_threads_mask");
  return simd_vote{m};
}
// Shifts within groups of `modulo` lanes (MSL 2.4): the lanes shifted past a group's end take
// `filling` from the other end of the group. Lanes that did not take part read as their own value.
template <class T> inline T shuffle_and_fill(T data, T filling, int delta, uint32_t modulo, aproto_site site,
                                             const char* what) {
  struct Pair { T data, filling; } mine{data, filling};
  uint32_t m;
  const unsigned char* d = aproto_rt::exchange(mine, m, site, 0, what);
  const uint32_t me = aproto_rt::lane();
  if (modulo == 0 || modulo > APROTO_SIMD_WIDTH) modulo = APROTO_SIMD_WIDTH;
  const int p = (int)(me % modulo), base = (int)(me - me % modulo), from = p + delta;
  const bool fill = from < 0 || from >= (int)modulo;
  const uint32_t src = (uint32_t)(base + (from < 0 ? from + (int)modulo : from >= (int)modulo ? from - (int)modulo : from));
  if (src >= APROTO_SIMD_WIDTH || !(m >> src & 1)) return data;
  Pair other = aproto_rt::slot<Pair>(d, src);
  return fill ? other.filling : other.data;
}
template <class T> inline T simd_shuffle_and_fill_down(T data, T filling, ushort delta, ushort modulo, APROTO_SITE) {
  return shuffle_and_fill(data, filling, (int)delta, modulo, __site, "simd_shuffle_and_fill_down");
}
template <class T> inline T simd_shuffle_and_fill_down(T data, T filling, ushort delta, APROTO_SITE) {
  return shuffle_and_fill(data, filling, (int)delta, APROTO_SIMD_WIDTH, __site, "simd_shuffle_and_fill_down");
}
template <class T> inline T simd_shuffle_and_fill_up(T data, T filling, ushort delta, ushort modulo, APROTO_SITE) {
  return shuffle_and_fill(data, filling, -(int)delta, modulo, __site, "simd_shuffle_and_fill_up");
}
template <class T> inline T simd_shuffle_and_fill_up(T data, T filling, ushort delta, APROTO_SITE) {
  return shuffle_and_fill(data, filling, -(int)delta, APROTO_SIMD_WIDTH, __site, "simd_shuffle_and_fill_up");
}
inline bool simd_is_first(APROTO_SITE) {
  uint32_t m;
  aproto_rt::exchange(0, m, __site, 0, "simd_is_first");
  return aproto_rt::lane() == (uint32_t)__builtin_ctz(m);
}

// ---- simdgroup_matrix<T, 8, 8>
// Every lane keeps its own copy of the 8x8 tile, in one of two states:
//  - whole: all 64 elements are current (after a load, make_filled, a gather);
//  - lane-only: only the lane's 2 elements in Apple's layout are current (after a multiply, which each
//    lane computes for its own elements only, or after thread_elements() handed them out for writing).
// A whole-matrix use of a lane-only matrix (an A or B operand, a store) first gathers the 32x2 owned
// elements from all lanes: one rendezvous that every lane of the SIMD-group must join, as on the GPU.
// The accumulator of a multiply needs only the lane's own elements, so a chain of multiply-accumulates
// runs without any rendezvous and each lane does 1/32 of the arithmetic.
inline void sg_matrix_coord(uint32_t lane, int& row, int& col) {
  int quad = (int)lane / 4;
  row = (quad & 4) + ((int)lane / 2) % 4;
  col = (quad & 2) * 2 + ((int)lane % 2) * 2;
}
// True when the lane's SIMD-group has all 32 lanes (a partial one computes whole matrices, since
// missing lanes cannot supply their elements).
inline bool simdgroup_is_full(const aproto_thread_pos& p) {
  uint32_t threads = p.threads_per_threadgroup[0] * p.threads_per_threadgroup[1] * p.threads_per_threadgroup[2];
  return threads - p.simdgroup_index_in_threadgroup[0] * APROTO_SIMD_WIDTH >= APROTO_SIMD_WIDTH;
}
template <class T, int Cols, int Rows> struct simdgroup_matrix {
  static_assert(Cols == 8 && Rows == 8, "the host backend emulates 8x8 simdgroup matrices only");
  // mutable: gathering makes the lane's copy whole without changing the matrix's value, so it runs on
  // operands (taken by const reference) in place, once, instead of on a copy at every use.
  mutable T m[64];
  mutable bool lane_only = false;
  simdgroup_matrix() = default;
  explicit simdgroup_matrix(T diagonal) {
    for (int i = 0; i < 64; i++) m[i] = (i % 9 == 0) ? diagonal : T(0);
  }
  vec<T, 2>& thread_elements() {
    int r, c;
    sg_matrix_coord(aproto_rt::lane(), r, c);
    lane_only = true;
    return *reinterpret_cast<vec<T, 2>*>(&m[r * 8 + c]);
  }
  void gather(aproto_site site) const {
    if (!lane_only) return;
    int r, c;
    sg_matrix_coord(aproto_rt::lane(), r, c);
    vec<T, 2> mine;
    mine[0] = m[r * 8 + c];
    mine[1] = m[r * 8 + c + 1];
    uint32_t mask;
    const unsigned char* d = aproto_rt::exchange(mine, mask, site, APROTO_SIMD_ALL_LANES, "simdgroup_matrix gather");
    for (uint32_t l = 0; l < APROTO_SIMD_WIDTH; l++) {
      if (!(mask >> l & 1)) continue;
      sg_matrix_coord(l, r, c);
      vec<T, 2> e = aproto_rt::slot<vec<T, 2>>(d, l);
      m[r * 8 + c] = e[0];
      m[r * 8 + c + 1] = e[1];
    }
    lane_only = false;
  }
};
typedef simdgroup_matrix<float, 8, 8> simdgroup_float8x8;
typedef simdgroup_matrix<half, 8, 8> simdgroup_half8x8;
typedef simdgroup_matrix<bfloat, 8, 8> simdgroup_bfloat8x8;

template <class T, int C, int R = C> inline simdgroup_matrix<T, C, R> make_filled_simdgroup_matrix(T value) {
  simdgroup_matrix<T, C, R> r;
  for (int i = 0; i < 64; i++) r.m[i] = value;
  return r;
}
// origin is (column, row) of the tile's top-left element in the matrix as loaded: with transpose, in
// the transposed matrix, so the source offset is origin.x rows and origin.y columns (the convention
// metal-flash-attention's reimplementation of these functions follows).
inline ulong sg_matrix_offset(ulong elements_per_row, ulong2 origin, bool transpose) {
  return transpose ? origin.x * elements_per_row + origin.y : origin.y * elements_per_row + origin.x;
}
template <class T, class P>
inline void simdgroup_load(simdgroup_matrix<T, 8, 8>& d, const P* src, ulong elements_per_row = 8,
                           ulong2 origin = 0, bool transpose = false) {
  src += sg_matrix_offset(elements_per_row, origin, transpose);
  for (int r = 0; r < 8; r++)
    for (int c = 0; c < 8; c++)
      d.m[r * 8 + c] = (T)(transpose ? src[c * elements_per_row + r] : src[r * elements_per_row + c]);
  d.lane_only = false;
}
template <class T, class P>
inline void simdgroup_store(const simdgroup_matrix<T, 8, 8>& s, P* dst, ulong elements_per_row = 8,
                            ulong2 origin = 0, bool transpose = false, APROTO_SITE) {
  s.gather(__site);
  dst += sg_matrix_offset(elements_per_row, origin, transpose);
  for (int r = 0; r < 8; r++)
    for (int c = 0; c < 8; c++)
      (transpose ? dst[c * elements_per_row + r] : dst[r * elements_per_row + c]) = (P)s.m[r * 8 + c];
}
// d = a * b + c, accumulated in float. Each lane computes its own two elements of d (row r, columns
// col and col + 1), which need row r of a, two columns of b and its own elements of c.
template <class TD, class TA, class TB, class TC>
inline void simdgroup_multiply_accumulate(simdgroup_matrix<TD, 8, 8>& d, const simdgroup_matrix<TA, 8, 8>& a,
                                          const simdgroup_matrix<TB, 8, 8>& b, const simdgroup_matrix<TC, 8, 8>& c,
                                          APROTO_SITE) {
  a.gather(__site);
  b.gather(__site);
  const aproto_thread_pos& pos = aproto_rt::pos();
  if (simdgroup_is_full(pos)) {
    int r, col;
    sg_matrix_coord(pos.thread_index_in_simdgroup[0], r, col);
    float e0 = (float)c.m[r * 8 + col], e1 = (float)c.m[r * 8 + col + 1];
    for (int k = 0; k < 8; k++) {
      const float x = (float)a.m[r * 8 + k];
      e0 = __builtin_fmaf(x, (float)b.m[k * 8 + col], e0);
      e1 = __builtin_fmaf(x, (float)b.m[k * 8 + col + 1], e1);
    }
    d.m[r * 8 + col] = (TD)e0;
    d.m[r * 8 + col + 1] = (TD)e1;
    d.lane_only = true;
    return;
  }
  c.gather(__site);
  float fa[64], fb[64], acc[64];
  for (int i = 0; i < 64; i++) { fa[i] = (float)a.m[i]; fb[i] = (float)b.m[i]; acc[i] = (float)c.m[i]; }
  for (int i = 0; i < 8; i++)
    for (int k = 0; k < 8; k++)
      for (int j = 0; j < 8; j++) acc[i * 8 + j] = __builtin_fmaf(fa[i * 8 + k], fb[k * 8 + j], acc[i * 8 + j]);
  for (int i = 0; i < 64; i++) d.m[i] = (TD)acc[i];
  d.lane_only = false;
}
template <class TD, class TA, class TB>
inline void simdgroup_multiply(simdgroup_matrix<TD, 8, 8>& d, const simdgroup_matrix<TA, 8, 8>& a,
                               const simdgroup_matrix<TB, 8, 8>& b, APROTO_SITE) {
  simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<TD, 8, 8>(TD(0)), __site);
}

// ---- matrix<T, C, R>: C columns of R elements (floatCxR), indexed by column, as in MSL.
template <class T, int C, int R> struct matrix {
  static_assert(C >= 2 && C <= 4 && R >= 2 && R <= 4, "MSL matrices have 2 to 4 columns and rows");
  vec<T, R> columns[C];
  matrix() = default;
  explicit matrix(T diagonal) {  // diagonal matrix, zeros elsewhere
    for (int c = 0; c < C; c++) {
      columns[c] = (vec<T, R>)(T)0;
      if (c < R) columns[c][c] = diagonal;
    }
  }
  template <class... V, std::enable_if_t<sizeof...(V) == C && (std::is_same_v<V, vec<T, R>> && ...), int> = 0>
  matrix(V... cols) : columns{cols...} {}
  template <class... S, std::enable_if_t<sizeof...(S) == C * R && (!aproto_rt::is_vec<S> && ...), int> = 0>
  matrix(S... scalars) {  // column by column
    const T v[] = {(T)scalars...};
    for (int i = 0; i < C * R; i++) columns[i / R][i % R] = v[i];
  }
  template <class U> explicit matrix(const matrix<U, C, R>& m) {  // element-wise conversion
    for (int c = 0; c < C; c++) columns[c] = __builtin_convertvector(m.columns[c], vec<T, R>);
  }
  vec<T, R>& operator[](int c) { return columns[c]; }
  const vec<T, R>& operator[](int c) const { return columns[c]; }
};
template <class T, int C, int R> inline vec<T, R> operator*(const matrix<T, C, R>& m, vec<T, C> v) {
  vec<T, R> r = m.columns[0] * v[0];
  for (int c = 1; c < C; c++) r += m.columns[c] * v[c];
  return r;
}
template <class T, int C, int R> inline vec<T, C> operator*(vec<T, R> v, const matrix<T, C, R>& m) {
  vec<T, C> r;
  for (int c = 0; c < C; c++) r[c] = dot(v, m.columns[c]);
  return r;
}
template <class T, int K, int C, int R>
inline matrix<T, C, R> operator*(const matrix<T, K, R>& a, const matrix<T, C, K>& b) {
  matrix<T, C, R> r;
  for (int c = 0; c < C; c++) r.columns[c] = a * b.columns[c];
  return r;
}
#define APROTO_MATRIX_OP(op)                                                                              \
  template <class T, int C, int R> inline matrix<T, C, R> operator op(matrix<T, C, R> a, const matrix<T, C, R>& b) { \
    for (int c = 0; c < C; c++) a.columns[c] = a.columns[c] op b.columns[c];                                 \
    return a;                                                                                                \
  }
APROTO_MATRIX_OP(+) APROTO_MATRIX_OP(-)
#undef APROTO_MATRIX_OP
template <class T, int C, int R> inline matrix<T, C, R> operator*(matrix<T, C, R> m, T s) {
  for (int c = 0; c < C; c++) m.columns[c] *= s;
  return m;
}
template <class T, int C, int R> inline matrix<T, C, R> operator*(T s, const matrix<T, C, R>& m) { return m * s; }
template <class T, int C, int R> inline matrix<T, R, C> transpose(const matrix<T, C, R>& m) {
  matrix<T, R, C> t;
  for (int c = 0; c < C; c++)
    for (int r = 0; r < R; r++) t.columns[r][c] = m.columns[c][r];
  return t;
}
#define APROTO_MATRIX_TYPES(T)                                                                 \
  typedef matrix<T, 2, 2> T##2x2; typedef matrix<T, 2, 3> T##2x3; typedef matrix<T, 2, 4> T##2x4; \
  typedef matrix<T, 3, 2> T##3x2; typedef matrix<T, 3, 3> T##3x3; typedef matrix<T, 3, 4> T##3x4; \
  typedef matrix<T, 4, 2> T##4x2; typedef matrix<T, 4, 3> T##4x3; typedef matrix<T, 4, 4> T##4x4;
APROTO_MATRIX_TYPES(float) APROTO_MATRIX_TYPES(half)
#undef APROTO_MATRIX_TYPES

// ---- <metal_type_traits>: the standard traits, with half and bfloat as the floating-point types MSL
// makes them
using std::conditional; using std::conditional_t; using std::decay; using std::decay_t; using std::enable_if;
using std::enable_if_t; using std::false_type; using std::integral_constant; using std::is_const;
using std::is_const_v; using std::is_convertible; using std::is_convertible_v; using std::is_integral;
using std::is_integral_v; using std::is_pointer; using std::is_pointer_v; using std::is_same; using std::is_same_v;
using std::is_signed; using std::is_signed_v; using std::is_unsigned; using std::is_unsigned_v;
using std::make_signed; using std::make_signed_t; using std::make_unsigned; using std::make_unsigned_t;
using std::remove_const; using std::remove_const_t; using std::remove_cv; using std::remove_cv_t;
using std::remove_reference; using std::remove_reference_t; using std::true_type; using std::void_t;
template <class T> struct is_floating_point
    : std::bool_constant<std::is_same_v<std::remove_cv_t<T>, float> || std::is_same_v<std::remove_cv_t<T>, half> ||
                         std::is_same_v<std::remove_cv_t<T>, bfloat>> {};
template <class T> constexpr bool is_floating_point_v = is_floating_point<T>::value;
template <class T> struct is_arithmetic : std::bool_constant<std::is_integral_v<T> || is_floating_point_v<T>> {};
template <class T> constexpr bool is_arithmetic_v = is_arithmetic<T>::value;
template <class T> struct is_scalar : std::bool_constant<is_arithmetic_v<T> || std::is_pointer_v<T> || std::is_enum_v<T>> {};
template <class T> constexpr bool is_scalar_v = is_scalar<T>::value;
template <class T> struct is_vector : std::bool_constant<aproto_rt::is_vec<T>> {};
template <class T> constexpr bool is_vector_v = is_vector<T>::value;

// ---- <metal_logging>: os_log accepts messages and drops them (the host has no GPU log stream).
struct os_log {
  constexpr os_log() = default;
  constexpr os_log(const char*, const char*) {}
  template <class... A> void log(const char*, A...) const {}
  template <class... A> void log_debug(const char*, A...) const {}
  template <class... A> void log_info(const char*, A...) const {}
  template <class... A> void log_error(const char*, A...) const {}
  template <class... A> void log_fault(const char*, A...) const {}
};

// ---- <metal_array>: metal::array<T, N>, a fixed-size aggregate like std::array (MSL 2.4 section 2.12);
// CubeCL views its shared memory through it, Slang declares groupshared arrays with it.
template <class T, size_t N> struct array {
  T elems_[N];
  constexpr size_t size() const { return N; }
  constexpr T& operator[](size_t i) { return elems_[i]; }
  constexpr const T& operator[](size_t i) const { return elems_[i]; }
};

// ---- atomics: device atomics race across worker threads for real, so they map onto real atomics.
enum memory_order { memory_order_relaxed = __ATOMIC_RELAXED };
template <class T> struct atomic { T v; };
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
template <class T, class U> inline T atomic_fetch_add_explicit(volatile atomic<T>* a, U x, memory_order) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(&a->v, (T)x, __ATOMIC_RELAXED);
  } else {
    T old = __atomic_load_n(&a->v, __ATOMIC_RELAXED), next;
    do next = old + (T)x;
    while (!__atomic_compare_exchange(&a->v, &old, &next, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old;
  }
}
template <class T, class U> inline T atomic_fetch_sub_explicit(volatile atomic<T>* a, U x, memory_order o) {
  return atomic_fetch_add_explicit(a, -(T)x, o);
}
template <class T, class U> inline T atomic_fetch_max_explicit(volatile atomic<T>* a, U x, memory_order) {
  return __atomic_fetch_max(&a->v, (T)x, __ATOMIC_RELAXED);
}
template <class T, class U> inline T atomic_fetch_min_explicit(volatile atomic<T>* a, U x, memory_order) {
  return __atomic_fetch_min(&a->v, (T)x, __ATOMIC_RELAXED);
}
template <class T> inline T atomic_load_explicit(volatile atomic<T>* a, memory_order) { return __atomic_load_n(&a->v, __ATOMIC_RELAXED); }
template <class T, class U> inline void atomic_store_explicit(volatile atomic<T>* a, U x, memory_order) {
  __atomic_store_n(&a->v, (T)x, __ATOMIC_RELAXED);
}
template <class T, class U> inline T atomic_exchange_explicit(volatile atomic<T>* a, U x, memory_order) {
  return __atomic_exchange_n(&a->v, (T)x, __ATOMIC_RELAXED);
}
}  // namespace metal

// ---- constants MSL provides as macros
#ifndef MAXFLOAT
#define MAXFLOAT 3.402823466e+38f
#endif
#ifndef HUGE_VALF
#define HUGE_VALF __builtin_huge_valf()
#endif
#ifndef FLT_MAX
#define FLT_MAX 3.402823466e+38f
#endif
#ifndef FLT_MIN
#define FLT_MIN 1.175494351e-38f
#endif
#ifndef FLT_EPSILON
#define FLT_EPSILON 1.192092896e-07f
#endif
#ifndef INFINITY
#define INFINITY __builtin_inff()
#endif
#ifndef NAN
#define NAN __builtin_nanf("")
#endif
#define HALF_MAX ((half)65504.0f)
#define MAXHALF HALF_MAX
#define HUGE_VALH ((half)__builtin_inff())
#define HALF_MIN ((half)6.103515625e-05f)
#define HALF_EPSILON ((half)0.0009765625f)
#define M_PI_F 3.14159265358979323846f
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.44269504088896340736f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.693147180559945309417f
#define M_LN10_F 2.30258509299404568402f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f
#define M_PI_2_F 1.57079632679489661923f
#define M_PI_4_F 0.785398163397448309616f
#define M_1_PI_F 0.318309886183790671538f
#define M_2_PI_F 0.636619772367581343076f
#define M_2_SQRTPI_F 1.12837916709551257390f
#define M_PI_H ((half)3.14159265358979323846f)
#define M_E_H ((half)2.71828182845904523536f)
#define M_LOG2E_H ((half)1.44269504088896340736f)
#define M_LN2_H ((half)0.693147180559945309417f)
#define M_SQRT2_H ((half)1.41421356237309504880f)
#define M_SQRT1_2_H ((half)0.707106781186547524401f)
#define M_2_SQRTPI_H ((half)1.12837916709551257390f)
#define METAL_FUNC inline __attribute__((always_inline))

// ---- Apple's builtin spellings, which public headers (MLX's bf16_math.h) call directly. The last
// argument of the math ones says fast or precise; the host computes in IEEE float either way.
#define __METAL_MAYBE_FAST_MATH__ false
#define __METAL_FAST_MATH__ true
#define __METAL_PRECISE_MATH__ false
#define APROTO_MATH_BUILTIN(name)                                                                                \
  template <class T> inline auto __metal_##name(T x, bool) -> decltype(::metal::name(x)) { return ::metal::name(x); } \
  template <class T> inline auto __metal_##name(T x, T y, bool) -> decltype(::metal::name(x, y)) {                   \
    return ::metal::name(x, y);                                                                                   \
  }                                                                                                               \
  template <class T> inline auto __metal_##name(T x, T y, T z) -> decltype(::metal::name(x, y, z)) {                 \
    return ::metal::name(x, y, z);                                                                                \
  }                                                                                                               \
  template <class T> inline auto __metal_##name(T x, T y, T z, bool) -> decltype(::metal::name(x, y, z)) {           \
    return ::metal::name(x, y, z);                                                                                \
  }
APROTO_MATH_BUILTIN(fabs) APROTO_MATH_BUILTIN(acos) APROTO_MATH_BUILTIN(acosh) APROTO_MATH_BUILTIN(asin)
APROTO_MATH_BUILTIN(asinh) APROTO_MATH_BUILTIN(atan) APROTO_MATH_BUILTIN(atan2) APROTO_MATH_BUILTIN(atanh)
APROTO_MATH_BUILTIN(ceil) APROTO_MATH_BUILTIN(cos) APROTO_MATH_BUILTIN(cosh) APROTO_MATH_BUILTIN(cospi)
APROTO_MATH_BUILTIN(divide) APROTO_MATH_BUILTIN(exp) APROTO_MATH_BUILTIN(exp10) APROTO_MATH_BUILTIN(exp2)
APROTO_MATH_BUILTIN(floor) APROTO_MATH_BUILTIN(fma) APROTO_MATH_BUILTIN(fmax) APROTO_MATH_BUILTIN(fmax3)
APROTO_MATH_BUILTIN(fmedian3) APROTO_MATH_BUILTIN(fmin) APROTO_MATH_BUILTIN(fmin3) APROTO_MATH_BUILTIN(fmod)
APROTO_MATH_BUILTIN(fract) APROTO_MATH_BUILTIN(log) APROTO_MATH_BUILTIN(log10) APROTO_MATH_BUILTIN(log2)
APROTO_MATH_BUILTIN(pow) APROTO_MATH_BUILTIN(powr) APROTO_MATH_BUILTIN(rint) APROTO_MATH_BUILTIN(round)
APROTO_MATH_BUILTIN(rsqrt) APROTO_MATH_BUILTIN(sin) APROTO_MATH_BUILTIN(sinh) APROTO_MATH_BUILTIN(sinpi)
APROTO_MATH_BUILTIN(sqrt) APROTO_MATH_BUILTIN(tan) APROTO_MATH_BUILTIN(tanh) APROTO_MATH_BUILTIN(tanpi)
APROTO_MATH_BUILTIN(trunc)
#undef APROTO_MATH_BUILTIN
template <class T> inline T __metal_frexp(T x, int* e) { return ::metal::frexp(x, *e); }
template <class T> inline T __metal_ldexp(T x, int k, bool) { return ::metal::ldexp(x, k); }
template <class T> inline T __metal_nextafter(T x, T y) { return ::metal::nextafter(x, y); }
// SIMD builtins: the call site (for which lanes meet) is the wrapper's caller, as with any helper.
#define APROTO_SIMD_BUILTIN(name)                                                                      \
  template <class... A> inline auto __metal_##name(A... a) -> decltype(::metal::name(a...)) { return ::metal::name(a...); }
APROTO_SIMD_BUILTIN(simd_broadcast) APROTO_SIMD_BUILTIN(simd_shuffle) APROTO_SIMD_BUILTIN(simd_shuffle_down)
APROTO_SIMD_BUILTIN(simd_shuffle_up) APROTO_SIMD_BUILTIN(simd_shuffle_xor) APROTO_SIMD_BUILTIN(simd_shuffle_rotate_down)
APROTO_SIMD_BUILTIN(simd_shuffle_rotate_up) APROTO_SIMD_BUILTIN(simd_shuffle_and_fill_down)
APROTO_SIMD_BUILTIN(simd_shuffle_and_fill_up) APROTO_SIMD_BUILTIN(simd_max) APROTO_SIMD_BUILTIN(simd_min)
APROTO_SIMD_BUILTIN(simd_sum) APROTO_SIMD_BUILTIN(simd_product) APROTO_SIMD_BUILTIN(simd_broadcast_first)
APROTO_SIMD_BUILTIN(simd_prefix_exclusive_product) APROTO_SIMD_BUILTIN(simd_prefix_exclusive_sum)
APROTO_SIMD_BUILTIN(simd_prefix_inclusive_product) APROTO_SIMD_BUILTIN(simd_prefix_inclusive_sum)
#undef APROTO_SIMD_BUILTIN
template <class T> inline T __metal_get_simdgroup_size(T) { return (T)APROTO_SIMD_WIDTH; }
// Bitwise SIMD reductions of a float act on its bits (MLX's bf16_math.h declares simd_xor(bfloat)).
#define APROTO_SIMD_BITWISE_BUILTIN(name)                                                            \
  template <class T> inline T __metal_##name(T v) {                                                  \
    if constexpr (std::is_floating_point_v<T>) {                                                     \
      using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>;                               \
      return __builtin_bit_cast(T, ::metal::name(__builtin_bit_cast(U, v)));                         \
    } else {                                                                                         \
      return ::metal::name(v);                                                                       \
    }                                                                                                \
  }
APROTO_SIMD_BITWISE_BUILTIN(simd_and) APROTO_SIMD_BITWISE_BUILTIN(simd_or) APROTO_SIMD_BITWISE_BUILTIN(simd_xor)
#undef APROTO_SIMD_BITWISE_BUILTIN
