// Command-line driver for the CUDA emulator: runs one call of a launcher from csrc/kernels/ on
// tensors that tests/cuda_emulator.py wrote to a directory, and writes the outputs back.
//
//   harness grouped_conv <dir>    plan + launch, like csrc/torch/grouped_conv_bn_relu.cpp
//   harness grouped_conv_dgrad <dir>, grouped_conv_wgrad <dir>
//                                 the backward's launches, like csrc/torch/grouped_conv_backward.cpp
//   harness squeeze_excite <dir>  launch_squeeze_excite, like csrc/torch/squeeze_excite.cpp
//   harness batchnorm_train_forward <dir>, batchnorm_train_backward_sums <dir>,
//           batchnorm_train_grad_z <dir>
//                                 train-mode BatchNorm's launches, like csrc/torch/batchnorm_train.cpp
//   harness selftest <name>       a deliberately broken kernel, to show the emulator catches it
//
// <dir>/params.txt holds "key value..." lines; every tensor is <dir>/<name>.bin, loaded into a
// buffer of exactly its size (so AddressSanitizer reports any access past it).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "access_profile.h"
#include "kernels/params.h"

namespace {

using resnext_kernels::DType;

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "harness: %s\n", msg.c_str());
  std::exit(2);
}

std::map<std::string, std::vector<int64_t>> read_params(const std::string& dir) {
  std::ifstream in(dir + "/params.txt");
  if (!in) die("cannot read " + dir + "/params.txt");
  std::map<std::string, std::vector<int64_t>> params;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string key;
    if (!(fields >> key)) continue;
    int64_t v;
    while (fields >> v) params[key].push_back(v);
  }
  return params;
}

struct Params {
  std::map<std::string, std::vector<int64_t>> values;
  int64_t get(const std::string& key, size_t i = 0) const {
    const auto it = values.find(key);
    if (it == values.end() || it->second.size() <= i) die("params.txt: missing " + key);
    return it->second[i];
  }
  bool has(const std::string& key) const { return values.count(key) > 0; }
  void strides(const std::string& key, int64_t* out) const {
    for (int i = 0; i < 4; ++i) out[i] = get(key, i);
  }
};

// A buffer of exactly the file's size (plus `lead` bytes in front, for misaligned views).
struct Buffer {
  unsigned char* base = nullptr;
  size_t bytes = 0, lead = 0;
  void* data() const { return base + lead; }
};

Buffer load(const std::string& dir, const std::string& name, size_t lead = 0) {
  std::ifstream in(dir + "/" + name + ".bin", std::ios::binary | std::ios::ate);
  if (!in) die("cannot read " + name + ".bin");
  Buffer b;
  b.bytes = static_cast<size_t>(in.tellg());
  b.lead = lead;
  void* mem = nullptr;
  // 256-byte aligned as cudaMalloc's are (the access profile's sector counts depend on it)
  if (posix_memalign(&mem, 256, lead + b.bytes + (lead + b.bytes == 0 ? 1 : 0)) != 0) die("oom");
  b.base = static_cast<unsigned char*>(mem);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(b.data()), static_cast<std::streamsize>(b.bytes));
  cuda_emulator::profile::note_global_buffer(b.base, b.lead + b.bytes);
  return b;
}

void save(const std::string& dir, const std::string& name, const Buffer& b) {
  std::ofstream out(dir + "/" + name + ".bin", std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.bytes));
}

Buffer scratch(size_t bytes) {
  Buffer b;
  b.bytes = bytes;
  void* mem = nullptr;
  if (posix_memalign(&mem, 256, bytes > 0 ? bytes : 1) != 0) die("oom");
  std::memset(mem, 0xff, bytes > 0 ? bytes : 1);  // poison: NaN in every float type
  b.base = static_cast<unsigned char*>(mem);
  cuda_emulator::profile::note_global_buffer(b.base, bytes);
  return b;
}

int run_grouped_conv(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  const size_t elem = dtype == DType::kFloat32 ? 4 : 2;
  Buffer x = load(dir, "x", static_cast<size_t>(prm.get("x_lead_elems")) * elem);
  Buffer w = load(dir, "w"), scale = load(dir, "scale"), shift = load(dir, "shift");
  Buffer y = load(dir, "y");

  resnext_kernels::GroupedConvParams p{};
  p.x = x.data();
  p.w = w.data();
  p.scale = static_cast<const float*>(scale.data());
  p.shift = static_cast<const float*>(shift.data());
  p.y = y.data();
  p.N = prm.get("N"); p.C_in = prm.get("C_in"); p.H = prm.get("H"); p.W = prm.get("W");
  p.C_out = prm.get("C_out"); p.H_out = prm.get("H_out"); p.W_out = prm.get("W_out");
  p.groups = prm.get("groups"); p.KH = prm.get("KH"); p.KW = prm.get("KW");
  p.stride_h = prm.get("stride", 0); p.stride_w = prm.get("stride", 1);
  p.pad_h = prm.get("padding", 0); p.pad_w = prm.get("padding", 1);
  p.dil_h = prm.get("dilation", 0); p.dil_w = prm.get("dilation", 1);
  prm.strides("x_stride", p.x_stride);
  prm.strides("w_stride", p.w_stride);
  prm.strides("y_stride", p.y_stride);
  p.relu = prm.get("relu") != 0;
  p.y_channels_last = prm.get("y_channels_last") != 0;
  if (prm.has("v3_band_pixels")) p.v3_band_pixels = prm.get("v3_band_pixels");
  // the ReLU mask, when asked for: mask.bin holds its bytes (poisoned by the caller)
  const bool with_mask = prm.has("with_mask") && prm.get("with_mask") != 0;
  Buffer mask = with_mask ? load(dir, "mask") : Buffer{};
  if (with_mask && mask.bytes > 0) p.relu_mask = static_cast<uint8_t*>(mask.data());

  resnext_kernels::GroupedConvPlan plan =
      resnext_kernels::plan_grouped_conv_bn_relu(p, dtype, static_cast<int>(prm.get("device_major")),
                                                 prm.get("allow_tf32") != 0,
                                                 !prm.has("allow_v3") || prm.get("allow_v3") != 0);
  if (prm.get("force_direct") != 0) plan = resnext_kernels::GroupedConvPlan{};
  Buffer workspace = scratch(static_cast<size_t>(plan.workspace_bytes));
  const cudaError_t err =
      resnext_kernels::launch_grouped_conv_bn_relu(p, dtype, plan, workspace.data(), nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "y", y);
  if (with_mask) save(dir, "mask", mask);
  // "...[ pack x]": x's layout copy before v3
  std::printf("path %s block_channels %d workspace_bytes %lld%s",
              resnext_kernels::grouped_conv_path_name(plan.path),
              plan.block_channels, static_cast<long long>(plan.workspace_bytes),
              plan.pack_x ? " pack x" : "");
  // Only when asked, so that the default report (the profiles' key) stays as it is.
  if (prm.has("v3_band_pixels")) {
    std::printf(" v3_band_rows %d", resnext_kernels::grouped_conv_v3_band_rows(p));
  }
  std::printf("\n");
  return 0;
}

// The backward's shared parameters: geometry, grad_y, the mask (when mask.bin is not empty),
// w and scale, from <dir>.
resnext_kernels::GroupedConvBackwardParams backward_params(const Params& prm,
                                                           const Buffer& grad_y,
                                                           const Buffer& mask, const Buffer& w,
                                                           const Buffer& scale) {
  resnext_kernels::GroupedConvBackwardParams p{};
  p.grad_y = grad_y.data();
  p.relu_mask = mask.bytes > 0 ? static_cast<const uint8_t*>(mask.data()) : nullptr;
  p.w = w.data();
  p.scale = static_cast<const float*>(scale.data());
  p.N = prm.get("N"); p.C_in = prm.get("C_in"); p.H = prm.get("H"); p.W = prm.get("W");
  p.C_out = prm.get("C_out"); p.H_out = prm.get("H_out"); p.W_out = prm.get("W_out");
  p.groups = prm.get("groups"); p.KH = prm.get("KH"); p.KW = prm.get("KW");
  p.stride_h = prm.get("stride", 0); p.stride_w = prm.get("stride", 1);
  p.pad_h = prm.get("padding", 0); p.pad_w = prm.get("padding", 1);
  p.dil_h = prm.get("dilation", 0); p.dil_w = prm.get("dilation", 1);
  prm.strides("grad_y_stride", p.grad_y_stride);
  prm.strides("w_stride", p.w_stride);
  return p;
}

// plan_grouped_conv_dgrad + launch_grouped_conv_dgrad, like csrc/torch/grouped_conv_backward.cpp
// ("device_major", "allow_v3" as the forward's)
// ("grad_y_lead_elems": grad_y starts that many elements past its buffer's 256-byte aligned
// base, as a view into a larger tensor can)
int run_grouped_conv_dgrad(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  const size_t elem = dtype == DType::kFloat32 ? 4 : 2;
  const size_t grad_y_lead =
      prm.has("grad_y_lead_elems") ? static_cast<size_t>(prm.get("grad_y_lead_elems")) * elem : 0;
  Buffer grad_y = load(dir, "grad_y", grad_y_lead), mask = load(dir, "mask"), w = load(dir, "w");
  Buffer scale = load(dir, "scale"), grad_x = load(dir, "grad_x");
  resnext_kernels::GroupedConvBackwardParams p = backward_params(prm, grad_y, mask, w, scale);
  p.grad_x = grad_x.data();
  prm.strides("grad_x_stride", p.grad_x_stride);
  p.grad_x_channels_last = prm.get("grad_x_channels_last") != 0;
  const resnext_kernels::GroupedConvDgradPlan plan = resnext_kernels::plan_grouped_conv_dgrad(
      p, dtype, static_cast<int>(prm.get("device_major")),
      !prm.has("allow_v3") || prm.get("allow_v3") != 0);
  Buffer workspace = scratch(static_cast<size_t>(plan.workspace_bytes));
  const cudaError_t err =
      resnext_kernels::launch_grouped_conv_dgrad(p, dtype, plan, workspace.data(), nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "grad_x", grad_x);
  // "path v3[ pack grad_y]": grad_y's layout copy before v3
  std::printf("path %s%s\n", resnext_kernels::grouped_conv_dgrad_path_name(plan.path),
              plan.pack_grad_y ? " pack grad_y" : "");
  return 0;
}

// plan_grouped_conv_wgrad + launch_grouped_conv_wgrad, like the torch glue ("device_major",
// "allow_v3" as dgrad's); "splits" in params.txt overrides the plan's (to show the sums do not
// depend on it beyond rounding).
int run_grouped_conv_wgrad(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  Buffer grad_y = load(dir, "grad_y"), mask = load(dir, "mask"), w = load(dir, "w");
  Buffer scale = load(dir, "scale"), x = load(dir, "x"), grad_w = load(dir, "grad_w");
  Buffer grad_scale = load(dir, "grad_scale"), grad_shift = load(dir, "grad_shift");
  resnext_kernels::GroupedConvBackwardParams p = backward_params(prm, grad_y, mask, w, scale);
  p.x = x.data();
  prm.strides("x_stride", p.x_stride);
  p.grad_w = grad_w.data();
  prm.strides("grad_w_stride", p.grad_w_stride);
  p.grad_scale = static_cast<float*>(grad_scale.data());
  p.grad_shift = static_cast<float*>(grad_shift.data());
  resnext_kernels::GroupedConvWgradPlan plan = resnext_kernels::plan_grouped_conv_wgrad(
      p, dtype, static_cast<int>(prm.get("device_major")),
      !prm.has("allow_v3") || prm.get("allow_v3") != 0);
  if (prm.has("splits")) {
    plan.splits = prm.get("splits");
    plan.workspace_bytes = resnext_kernels::grouped_conv_wgrad_workspace_bytes(p, plan, dtype);
  }
  Buffer workspace = scratch(static_cast<size_t>(plan.workspace_bytes));
  const cudaError_t err =
      resnext_kernels::launch_grouped_conv_wgrad(p, dtype, plan, workspace.data(), nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "grad_w", grad_w);
  save(dir, "grad_scale", grad_scale);
  save(dir, "grad_shift", grad_shift);
  // "...[ pack x][ pack grad_y]": the layout copies before v3
  std::printf("path %s splits %lld threads %d element_chunks %lld%s%s\n",
              resnext_kernels::grouped_conv_wgrad_path_name(plan.path),
              static_cast<long long>(plan.splits), plan.threads,
              static_cast<long long>(plan.element_chunks), plan.pack_x ? " pack x" : "",
              plan.pack_grad_y ? " pack grad_y" : "");
  return 0;
}

// launch_channels_last_copy: copies src ([N, C, H, W] with "strided" element strides) to dst,
// dense channels_last. ("dense_lead_bytes": dst starts that many bytes past its aligned base;
// "max_blocks": the grid's cap, so that blocks walk several tiles.)
int run_channels_last_copy(const std::string& dir) {
  Params prm{read_params(dir)};
  const size_t lead = prm.has("dense_lead_bytes") ? static_cast<size_t>(prm.get("dense_lead_bytes")) : 0;
  Buffer src = load(dir, "src");
  Buffer dst = load(dir, "dst", lead);
  resnext_kernels::ChannelsLastCopyParams p{};
  p.src = src.data();
  p.dst = dst.data();
  p.N = prm.get("N"); p.C = prm.get("C"); p.H = prm.get("H"); p.W = prm.get("W");
  prm.strides("strided", p.strided);
  p.max_blocks = prm.has("max_blocks") ? prm.get("max_blocks") : 0;
  const cudaError_t err = resnext_kernels::launch_channels_last_copy(p, nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "dst", dst);
  std::printf("copied\n");
  return 0;
}

int run_squeeze_excite(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  Buffer u = load(dir, "u"), out = load(dir, "out");
  Buffer w1 = load(dir, "w1"), w2 = load(dir, "w2");
  const bool has_residual = prm.get("has_residual") != 0;
  const bool has_b1 = prm.get("has_b1") != 0, has_b2 = prm.get("has_b2") != 0;
  Buffer residual = has_residual ? load(dir, "residual") : Buffer{};
  Buffer b1 = has_b1 ? load(dir, "b1") : Buffer{};
  Buffer b2 = has_b2 ? load(dir, "b2") : Buffer{};

  resnext_kernels::SqueezeExciteParams p{};
  p.N = prm.get("N"); p.C = prm.get("C"); p.H = prm.get("H"); p.W = prm.get("W");
  p.R = prm.get("R");
  Buffer pooled = scratch(static_cast<size_t>(p.N * p.C) * 4);
  Buffer gate = scratch(static_cast<size_t>(p.N * p.C) * 4);
  Buffer hidden = scratch(static_cast<size_t>(
      resnext_kernels::squeeze_excite_hidden_splits(p.C) * p.N * p.R) * 4);
  p.u = u.data();
  p.residual = has_residual ? residual.data() : nullptr;
  p.out = out.data();
  p.w1 = static_cast<const float*>(w1.data());
  p.b1 = has_b1 ? static_cast<const float*>(b1.data()) : nullptr;
  p.w2 = static_cast<const float*>(w2.data());
  p.b2 = has_b2 ? static_cast<const float*>(b2.data()) : nullptr;
  p.pooled = static_cast<float*>(pooled.data());
  p.gate = static_cast<float*>(gate.data());
  p.hidden = static_cast<float*>(hidden.data());
  prm.strides("u_stride", p.u_stride);
  prm.strides("out_stride", p.out_stride);
  if (has_residual) prm.strides("residual_stride", p.residual_stride);
  p.relu = prm.get("relu") != 0;
  p.channels_last = prm.get("channels_last") != 0;
  const cudaError_t err = resnext_kernels::launch_squeeze_excite(p, dtype, nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "out", out);
  std::printf("path %s\n",
              resnext_kernels::squeeze_excite_chunked(p, dtype) ? "chunked" : "elementwise");
  return 0;
}

// Train-mode BatchNorm (csrc/torch/batchnorm_train.cpp's launches). Every op: z.bin ("z_stride",
// N C H W, dtype; "z_lead_elems": z starts that many elements past its aligned base, as a view
// can), eps.bin (one fp32) and "reduce_rows_in_one" (optional: the reduction's levels on small
// shapes). Reports each operand's access ("z channels", "y pixels", ...).
resnext_kernels::BatchNormTrainParams batchnorm_train_params(const std::string& dir,
                                                             const Params& prm, const Buffer& z) {
  resnext_kernels::BatchNormTrainParams p{};
  p.N = prm.get("N"); p.C = prm.get("C"); p.H = prm.get("H"); p.W = prm.get("W");
  p.z = z.data();
  prm.strides("z_stride", p.z_stride);
  const Buffer eps = load(dir, "eps");
  if (eps.bytes != sizeof(float)) die("eps.bin: expected one float32");
  std::memcpy(&p.eps, eps.data(), sizeof(float));
  if (prm.has("reduce_rows_in_one")) p.reduce_rows_in_one = prm.get("reduce_rows_in_one");
  return p;
}

const char* access_of(const void* data, const int64_t* stride,
                      const resnext_kernels::BatchNormTrainParams& p) {
  return resnext_kernels::batchnorm_train_access_name(data, stride, p.N, p.C, p.H, p.W);
}

size_t lead_bytes(const Params& prm, const std::string& name, DType dtype) {
  const std::string key = name + "_lead_elems";
  return prm.has(key) ? static_cast<size_t>(prm.get(key)) * (dtype == DType::kFloat32 ? 4 : 2)
                      : 0;
}

// statistics into mean/var, then normalize into y and (when "relu") mask
int run_batchnorm_train_forward(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  Buffer z = load(dir, "z", lead_bytes(prm, "z", dtype)), y = load(dir, "y");
  Buffer gamma = load(dir, "gamma"), beta = load(dir, "beta");
  Buffer mean = load(dir, "mean"), var = load(dir, "var"), mask = load(dir, "mask");
  resnext_kernels::BatchNormTrainParams p = batchnorm_train_params(dir, prm, z);
  p.out = y.data();
  prm.strides("y_stride", p.out_stride);
  p.relu = prm.get("relu") != 0;
  p.relu_mask = p.relu ? static_cast<uint8_t*>(mask.data()) : nullptr;
  p.gamma = static_cast<const float*>(gamma.data());
  p.beta = static_cast<const float*>(beta.data());
  p.mean_out = static_cast<float*>(mean.data());
  p.var_out = static_cast<float*>(var.data());
  p.mean = p.mean_out;
  p.var = p.var_out;
  Buffer workspace = scratch(static_cast<size_t>(
      resnext_kernels::batchnorm_train_workspace_floats(p)) * 4);
  p.workspace = static_cast<float*>(workspace.data());
  if (p.N * p.H * p.W == 0 || p.C == 0) {  // as the glue: zero statistics, nothing launched
    std::memset(mean.data(), 0, mean.bytes);
    std::memset(var.data(), 0, var.bytes);
  } else {
    cudaError_t err = resnext_kernels::launch_batchnorm_train_statistics(p, dtype, nullptr);
    if (err == cudaSuccess) err = resnext_kernels::launch_batchnorm_train_normalize(p, dtype, nullptr);
    if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  }
  save(dir, "y", y);
  save(dir, "mask", mask);
  save(dir, "mean", mean);
  save(dir, "var", var);
  std::printf("z %s y %s\n", access_of(p.z, p.z_stride, p), access_of(p.out, p.out_stride, p));
  return 0;
}

// grad_y.bin ("grad_y_stride", "grad_y_lead_elems"), mask.bin (empty: no ReLU)
void load_gradient(const Params& prm, const std::string& dir, DType dtype, Buffer& grad_y,
                   Buffer& mask, resnext_kernels::BatchNormTrainParams& p) {
  grad_y = load(dir, "grad_y", lead_bytes(prm, "grad_y", dtype));
  mask = load(dir, "mask");
  p.grad_y = grad_y.data();
  prm.strides("grad_y_stride", p.grad_y_stride);
  p.relu_mask = mask.bytes > 0 ? static_cast<uint8_t*>(mask.data()) : nullptr;
}

int run_batchnorm_train_backward_sums(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  Buffer z = load(dir, "z", lead_bytes(prm, "z", dtype)), grad_y, mask;
  Buffer mean = load(dir, "mean"), var = load(dir, "var"), gamma = load(dir, "gamma");
  Buffer grad_gamma = load(dir, "grad_gamma"), grad_beta = load(dir, "grad_beta");
  Buffer coef = load(dir, "coef");
  resnext_kernels::BatchNormTrainParams p = batchnorm_train_params(dir, prm, z);
  load_gradient(prm, dir, dtype, grad_y, mask, p);
  p.mean = static_cast<const float*>(mean.data());
  p.var = static_cast<const float*>(var.data());
  p.gamma = static_cast<const float*>(gamma.data());
  p.grad_gamma = static_cast<float*>(grad_gamma.data());
  p.grad_beta = static_cast<float*>(grad_beta.data());
  p.coef_out = static_cast<float*>(coef.data());
  Buffer workspace = scratch(static_cast<size_t>(
      resnext_kernels::batchnorm_train_workspace_floats(p)) * 4);
  p.workspace = static_cast<float*>(workspace.data());
  const cudaError_t err = resnext_kernels::launch_batchnorm_train_backward_sums(p, dtype, nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "grad_gamma", grad_gamma);
  save(dir, "grad_beta", grad_beta);
  save(dir, "coef", coef);
  std::printf("z %s grad_y %s\n", access_of(p.z, p.z_stride, p),
              access_of(p.grad_y, p.grad_y_stride, p));
  return 0;
}

int run_batchnorm_train_grad_z(const std::string& dir) {
  Params prm{read_params(dir)};
  const DType dtype = static_cast<DType>(prm.get("dtype"));
  Buffer z = load(dir, "z", lead_bytes(prm, "z", dtype)), grad_y, mask;
  Buffer coef = load(dir, "coef"), grad_z = load(dir, "grad_z");
  resnext_kernels::BatchNormTrainParams p = batchnorm_train_params(dir, prm, z);
  load_gradient(prm, dir, dtype, grad_y, mask, p);
  p.coef = static_cast<const float*>(coef.data());
  p.out = grad_z.data();
  prm.strides("grad_z_stride", p.out_stride);
  const cudaError_t err = resnext_kernels::launch_batchnorm_train_grad_z(p, dtype, nullptr);
  if (err != cudaSuccess) die(std::string("launch failed: ") + cudaGetErrorString(err));
  save(dir, "grad_z", grad_z);
  std::printf("z %s grad_y %s grad_z %s\n", access_of(p.z, p.z_stride, p),
              access_of(p.grad_y, p.grad_y_stride, p), access_of(p.out, p.out_stride, p));
  return 0;
}

}  // namespace

int run_selftest(const std::string& name);  // selftest.cpp

int main(int argc, char** argv) {
  if (argc != 3) {
    die("usage: harness grouped_conv|grouped_conv_dgrad|grouped_conv_wgrad|squeeze_excite <dir>"
        " | selftest <name>");
  }
  const std::string op = argv[1];
  if (op == "grouped_conv") return run_grouped_conv(argv[2]);
  if (op == "squeeze_excite") return run_squeeze_excite(argv[2]);
  if (op == "grouped_conv_dgrad") return run_grouped_conv_dgrad(argv[2]);
  if (op == "grouped_conv_wgrad") return run_grouped_conv_wgrad(argv[2]);
  if (op == "channels_last_copy") return run_channels_last_copy(argv[2]);
  if (op == "batchnorm_train_forward") return run_batchnorm_train_forward(argv[2]);
  if (op == "batchnorm_train_backward_sums") return run_batchnorm_train_backward_sums(argv[2]);
  if (op == "batchnorm_train_grad_z") return run_batchnorm_train_grad_z(argv[2]);
  if (op == "selftest") return run_selftest(argv[2]);
  die("unknown op " + op);
}
