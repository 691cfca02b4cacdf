#include "metal/binary_archive.hpp"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <utility>

#include "metal/metal_util.hpp"
#include "runtime/errors.hpp"

namespace aproto::metal {

BinaryArchive::BinaryArchive(MTL::Device* device, std::string path) : device_(device), path_(std::move(path)) {
  AutoreleasePoolScope pool;
  auto desc = NS::TransferPtr(MTL::BinaryArchiveDescriptor::alloc()->init());
  // A descriptor without a URL creates an empty archive; with one, Metal loads that file.
  loaded_ = std::ifstream(path_).good();
  if (loaded_) desc->setUrl(NS::URL::fileURLWithPath(ns_string(path_)));
  NS::Error* error = nullptr;
  MTL::BinaryArchive* archive = device_->newBinaryArchive(desc.get(), &error);
  if (!archive)
    throw CompileError("[metal] cannot open binary archive '" + path_ + "': " + error_text(error));
  archive_ = NS::TransferPtr(archive);
}

void BinaryArchive::add(const MTL::ComputePipelineDescriptor* descriptor, const std::string& what) {
  AutoreleasePoolScope pool;
  NS::Error* error = nullptr;
  if (!archive_->addComputePipelineFunctions(descriptor, &error))
    throw CompileError("[metal] cannot add " + what + " to binary archive '" + path_ + "': " + error_text(error));
}

MTL::ComputePipelineState* BinaryArchive::build(MTL::ComputePipelineDescriptor* descriptor, std::string& miss_reason) {
  AutoreleasePoolScope pool;
  descriptor->setBinaryArchives(NS::Array::array(archive_.get()));
  NS::Error* error = nullptr;
  MTL::ComputePipelineState* state = device_->newComputePipelineState(
      descriptor, MTL::PipelineOptionFailOnBinaryArchiveMiss, nullptr, &error);
  if (!state) miss_reason = error ? error_text(error) : "not in the archive";
  return state;
}

void BinaryArchive::serialize() {
  AutoreleasePoolScope pool;
  // Metal may still map the file the archive was loaded from, so never write over it in place.
  std::string tmp = path_ + ".tmp" + std::to_string(getpid());
  NS::Error* error = nullptr;
  if (!archive_->serializeToURL(NS::URL::fileURLWithPath(ns_string(tmp)), &error))
    throw Error("[metal] cannot write binary archive '" + path_ + "': " + error_text(error));
  if (std::rename(tmp.c_str(), path_.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error("[metal] cannot move the written binary archive into place at '" + path_ + "'");
  }
}

}  // namespace aproto::metal
