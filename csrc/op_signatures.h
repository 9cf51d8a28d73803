// C++ signatures of the dgsnet ops (schemas in csrc/ops.cpp), for typed dispatcher calls
// (autograd.cpp, the eager entry in ops.cpp): one spelling, so the two cannot drift.
#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace dgsnet {

using OptTensor = std::optional<at::Tensor>;

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                              at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    double, double, bool, bool, bool, bool);
using BackwardSig = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, const OptTensor&, double, bool, bool, bool,
    at::ScalarType);

}  // namespace dgsnet
