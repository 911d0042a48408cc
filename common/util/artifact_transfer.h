#ifndef MAL_COMMON_UTIL_ARTIFACT_TRANSFER_H_
#define MAL_COMMON_UTIL_ARTIFACT_TRANSFER_H_

// A file sent as a stream of mal.v1.ArtifactChunk (proto/mal/v1/service.proto): the first chunk
// carries the name, the size (bytes) and the SHA-256 (hex) of the whole file, every chunk up to
// rpc::kArtifactChunkBytes of data. WorkerGateway.FetchArtifact and ModelRegistry.DownloadModel
// send this way; the worker daemon, malctl and mal-serve receive.

#include <grpcpp/grpcpp.h>
#include <grpcpp/support/sync_stream.h>

#include <string>

#include "mal/v1/service.pb.h"

namespace mal::rpc {

// Sends the file at `path` as `name`. NOT_FOUND when it cannot be opened; CANCELLED when the
// caller went away. The file is read twice (checksum first): files are replaced by rename, never
// rewritten, so the open file stays one version.
grpc::Status SendFile(grpc::ServerContext& context,
                      grpc::ServerWriterInterface<v1::ArtifactChunk>& writer,
                      const std::string& path, const std::string& name);

// Receives a stream into `path`: written to `path`.tmp-<pid> first, checked against the sender's
// size and SHA-256, renamed into place, so `path` is either the whole file or untouched. Errors:
// the stream's status, DATA_LOSS for a checksum or size mismatch, INTERNAL naming the file that
// could not be written; the temporary file is removed on every error.
grpc::Status ReceiveFile(grpc::ClientReaderInterface<v1::ArtifactChunk>& reader,
                         const std::string& path);

}  // namespace mal::rpc

#endif  // MAL_COMMON_UTIL_ARTIFACT_TRANSFER_H_
