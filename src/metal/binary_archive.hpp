// An MTL::BinaryArchive on disk: the GPU binaries of compute pipelines, so a later process can build
// them without running the backend compiler (prototype 4 measures what that saves).
#pragma once
#include <string>

#include <Foundation/Foundation.hpp>
#include <Metal/Metal.hpp>

namespace aproto::metal {

class BinaryArchive {
 public:
  // Opens the archive stored at `path`, or starts an empty one when the file does not exist yet
  // (serialize() writes it). Throws CompileError when the file exists but Metal cannot read it
  // (e.g. written by another OS version or GPU).
  BinaryArchive(MTL::Device* device, std::string path);

  const std::string& path() const { return path_; }
  bool loaded_from_file() const { return loaded_; }

  // Compiles the pipeline `descriptor` describes and adds its GPU binary; `what` names it in messages.
  // Throws CompileError.
  void add(const MTL::ComputePipelineDescriptor* descriptor, const std::string& what);

  // Builds the pipeline of `descriptor` from the archive alone (MTL::PipelineOptionFailOnBinaryArchiveMiss).
  // The descriptor is the lookup key, so it must describe the pipeline exactly as the one given to add()
  // did: both come from pipeline_descriptor() in metal_backend.cpp. This adds the archive to its
  // binaryArchives. Returns a pipeline the caller owns, or nullptr on a miss with the driver's reason in
  // `miss_reason`.
  MTL::ComputePipelineState* build(MTL::ComputePipelineDescriptor* descriptor, std::string& miss_reason);

  // Writes the archive to path() (through a temporary file renamed over it). Throws Error.
  void serialize();

 private:
  MTL::Device* device_;  // not owned: the backend outlives its archive
  std::string path_;
  bool loaded_ = false;
  NS::SharedPtr<MTL::BinaryArchive> archive_;
};

}  // namespace aproto::metal
