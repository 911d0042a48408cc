#include "common/util/artifact_transfer.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/util/grpc_channel.h"
#include "common/util/sha256.h"

namespace mal::rpc {

namespace fs = std::filesystem;

grpc::Status SendFile(grpc::ServerContext& context,
                      grpc::ServerWriterInterface<v1::ArtifactChunk>& writer,
                      const std::string& path, const std::string& name) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return grpc::Status(grpc::StatusCode::NOT_FOUND, absl::StrCat(name, ": cannot open"));
  Sha256 hash;
  std::vector<char> buf(kArtifactChunkBytes);
  int64_t size = 0;
  while (in.read(buf.data(), static_cast<std::streamsize>(buf.size())) || in.gcount() > 0) {
    hash.Update(absl::string_view(buf.data(), static_cast<size_t>(in.gcount())));
    size += in.gcount();
  }
  in.clear();
  in.seekg(0);
  v1::ArtifactChunk chunk;
  chunk.set_name(name);
  chunk.set_size(size);
  chunk.set_sha256(hash.HexDigest());
  bool first = true;
  while (first || in.read(buf.data(), static_cast<std::streamsize>(buf.size())) ||
         in.gcount() > 0) {
    if (!first) {
      chunk = v1::ArtifactChunk();
      chunk.set_data(buf.data(), static_cast<size_t>(in.gcount()));
    }
    first = false;
    if (context.IsCancelled() || !writer.Write(chunk)) return grpc::Status::CANCELLED;
  }
  return grpc::Status::OK;
}

grpc::Status ReceiveFile(grpc::ClientReaderInterface<v1::ArtifactChunk>& reader,
                         const std::string& path) {
  const std::string tmp = absl::StrCat(path, ".tmp-", ::getpid());
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  Sha256 hash;
  std::string expected, name = path;
  int64_t expected_size = -1, size = 0;
  v1::ArtifactChunk chunk;
  bool first = true;
  while (reader.Read(&chunk)) {
    if (first) {
      if (!chunk.name().empty()) name = chunk.name();
      expected_size = chunk.size();
      first = false;
    }
    if (!chunk.sha256().empty()) expected = chunk.sha256();
    hash.Update(chunk.data());
    size += static_cast<int64_t>(chunk.data().size());
    out.write(chunk.data().data(), static_cast<std::streamsize>(chunk.data().size()));
  }
  grpc::Status s = reader.Finish();
  out.close();
  if (s.ok() && !out) {
    s = grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat(tmp, ": cannot write"));
  } else if (s.ok() &&
             (hash.HexDigest() != expected || (expected_size > 0 && size != expected_size))) {
    s = grpc::Status(grpc::StatusCode::DATA_LOSS,
                     absl::StrCat(name, ": checksum or size mismatch after download (", size,
                                  " bytes received)"));
  }
  std::error_code ec;
  if (!s.ok()) {
    fs::remove(tmp, ec);
    return s;
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat(path, ": ", ec.message()));
  }
  return s;
}

}  // namespace mal::rpc
