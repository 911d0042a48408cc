#include "common/util/grpc_channel.h"

#include <arpa/inet.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/client_interceptor.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/util/files.h"
#include "common/util/logging.h"
#include "common/util/status_macros.h"

namespace mal::rpc {

namespace {

grpc::ChannelArguments ChannelArgs() {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly after a coordinator restart (the default backoff grows to 120 s): tries
  // 0.1 s apart at first, at most 0.5 s. GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is also how long one
  // connection attempt may take (gRPC's subchannel: deadline = max(backoff, min)). 5 s was
  // measured worse on a loaded 2-core host (a worker re-registered 5-21 s after a coordinator
  // restart, against 2-6 s at 100 ms: attempts stuck in the handshake waited out the longer
  // deadline instead of being retried).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  return args;
}

// Adds the bearer token to every call's metadata (works over plaintext too, unlike call
// credentials, which gRPC sends over TLS only).
class TokenInterceptor : public grpc::experimental::Interceptor {
 public:
  explicit TokenInterceptor(std::string header) : header_(std::move(header)) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_INITIAL_METADATA)) {
      methods->GetSendInitialMetadata()->insert({"authorization", header_});
    }
    methods->Proceed();
  }

 private:
  std::string header_;
};

class TokenInterceptorFactory : public grpc::experimental::ClientInterceptorFactoryInterface {
 public:
  explicit TokenInterceptorFactory(std::string token) : header_("Bearer " + std::move(token)) {}
  grpc::experimental::Interceptor* CreateClientInterceptor(
      grpc::experimental::ClientRpcInfo*) override {
    return new TokenInterceptor(header_);
  }

 private:
  std::string header_;
};

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  auto text = ReadFile(path);
  if (!text.ok())
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", text.status().message()));
  if (text->find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", path, " is not a PEM file"));
  }
  return text;
}

bool LoopbackIp(const sockaddr* a) {
  if (a->sa_family == AF_INET) {
    const uint32_t ip = ntohl(reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr);
    return (ip >> 24) == 127;
  }
  if (a->sa_family == AF_INET6) {
    return IN6_IS_ADDR_LOOPBACK(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr);
  }
  return false;
}

}  // namespace

bool IsLoopbackAddress(const std::string& address) {
  if (address.rfind("unix:", 0) == 0) return true;  // a local socket file
  std::string host = address.substr(0, address.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host.empty()) return false;  // ":7070" listens on every interface
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &found) != 0 || found == nullptr) return false;
  bool all = true;
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) all = all && LoopbackIp(a->ai_addr);
  ::freeaddrinfo(found);
  return all;
}

absl::StatusOr<std::string> LoadToken(const std::string& token_file, const char* token_env) {
  if (!token_file.empty()) {
    auto text = ReadFile(token_file);
    if (!text.ok())
      return absl::InvalidArgumentError(absl::StrCat("--token-file: ", text.status().message()));
    std::string token(absl::StripAsciiWhitespace(text->substr(0, text->find('\n'))));
    if (token.empty())
      return absl::InvalidArgumentError(absl::StrCat("--token-file: ", token_file, " is empty"));
    return token;
  }
  const char* env = token_env != nullptr ? std::getenv(token_env) : nullptr;
  return std::string(env != nullptr ? absl::StripAsciiWhitespace(env) : "");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeSecureChannel(const std::string& address,
                                                                 const ClientSecurity& security) {
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!security.ca_file.empty()) {
    grpc::SslCredentialsOptions ssl;
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(security.ca_file, "--tls-ca"));
    if (!security.cert_file.empty() || !security.key_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(security.cert_file, "--tls-cert"));
      ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(security.key_file, "--tls-key"));
    }
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args = ChannelArgs();
  if (security.token.empty()) return grpc::CreateCustomChannel(address, creds, args);
  std::vector<std::unique_ptr<grpc::experimental::ClientInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<TokenInterceptorFactory>(security.token));
  return grpc::experimental::CreateCustomChannelWithInterceptors(address, creds, args,
                                                                 std::move(interceptors));
}

void InitClientPolling() {
  ::setenv("GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS", "100", /*overwrite=*/0);
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& address) {
  return grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), ChannelArgs());
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const std::string& address, const ServerSecurity& security) {
  if (security.cert_file.empty() != security.key_file.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  if (security.cert_file.empty()) {
    if (!security.client_ca_file.empty())
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert");
    if (!IsLoopbackAddress(address) && !security.insecure) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--listen ", address,
          ": plaintext off loopback; give --tls-cert and --tls-key, or --insecure on a "
          "trusted network"));
    }
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions ssl;
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(security.cert_file, "--tls-cert"));
  ASSIGN_OR_RETURN(pair.private_key, ReadPem(security.key_file, "--tls-key"));
  ssl.pem_key_cert_pairs.push_back(pair);
  if (!security.client_ca_file.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(security.client_ca_file, "--tls-client-ca"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

const char* RoleName(Role role) {
  switch (role) {
    case Role::kUser:
      return "user";
    case Role::kWorker:
      return "worker";
    case Role::kAdmin:
      return "admin";
  }
  return "?";
}

namespace {

constexpr unsigned kEveryRole = static_cast<unsigned>(Role::kUser) |
                                static_cast<unsigned>(Role::kWorker) |
                                static_cast<unsigned>(Role::kAdmin);

std::string RoleNames(unsigned roles) {
  std::vector<std::string> names;
  for (Role r : {Role::kUser, Role::kWorker, Role::kAdmin})
    if (roles & static_cast<unsigned>(r)) names.emplace_back(RoleName(r));
  return names.empty() ? "none" : absl::StrJoin(names, ",");
}

// The role bits of "user", "worker,admin" ...; the first unknown name otherwise.
struct ParsedRoles {
  unsigned roles = 0;
  absl::string_view unknown;
};
ParsedRoles ParseRoles(absl::string_view field) {
  ParsedRoles out;
  for (absl::string_view name : absl::StrSplit(field, ',')) {
    bool known = false;
    for (Role r : {Role::kUser, Role::kWorker, Role::kAdmin}) {
      if (name == RoleName(r)) {
        out.roles |= static_cast<unsigned>(r);
        known = true;
      }
    }
    if (!known) {
      out.unknown = name;
      break;
    }
  }
  return out;
}

// Equal without an early exit, so timing does not tell how much of `want` matched.
bool ConstantTimeEqual(absl::string_view given, absl::string_view want) {
  unsigned diff = given.size() ^ want.size();
  for (size_t i = 0; i < want.size(); ++i)
    diff |= static_cast<unsigned char>(want[i]) ^
            (i < given.size() ? static_cast<unsigned char>(given[i]) : 0);
  return diff == 0;
}

}  // namespace

absl::StatusOr<TokenTable> LoadTokens(const std::string& token_file) {
  TokenTable table;
  if (token_file.empty()) return table;
  auto text = ReadFile(token_file);
  if (!text.ok())
    return absl::InvalidArgumentError(absl::StrCat("--token-file: ", text.status().message()));
  absl::string_view all = *text;
  absl::ConsumePrefix(&all, "\xEF\xBB\xBF");  // a UTF-8 byte order mark
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(all, '\n')) {
    ++line_number;
    // A comment: the whole line from '#', or from a '#' after a space ("user TOKEN  # alice").
    if (const size_t hash = line.find(" #"); hash != absl::string_view::npos)
      line = line.substr(0, hash);
    if (const size_t hash = line.find("\t#"); hash != absl::string_view::npos)
      line = line.substr(0, hash);
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const std::string where = absl::StrCat("--token-file: ", token_file, ":", line_number, ": ");
    for (char ch : fields.back()) {
      if (static_cast<unsigned char>(ch) < 0x21 || ch == 0x7f)
        return absl::InvalidArgumentError(
            absl::StrCat(where, "the token has a control character (it could never be sent)"));
    }
    if (fields.back().size() > 1024)
      return absl::InvalidArgumentError(
          absl::StrCat(where, "the token has ", fields.back().size(), " characters, at most 1024"));
    TokenTable::Entry entry;
    entry.line = line_number;
    if (fields.size() == 1 && ParseRoles(fields[0]).unknown.empty()) {
      // Not a legacy token that happens to read "user": a role whose token is missing (an empty
      // $(cat user.token) in a generated file), which would otherwise hold every role.
      return absl::InvalidArgumentError(
          absl::StrCat(where, "role '", fields[0], "' without a token"));
    }
    if (fields.size() == 1) {
      entry.token = std::string(fields[0]);
      entry.roles = kEveryRole;
      ++table.legacy_lines;
    } else if (fields.size() == 2) {
      const ParsedRoles roles = ParseRoles(fields[0]);
      if (!roles.unknown.empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, "unknown role '", roles.unknown,
                         "' (roles: user, worker, admin; 'ROLE[,ROLE] TOKEN')"));
      }
      entry.roles = roles.roles;
      entry.token = std::string(fields[1]);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          where, fields.size(), " fields; a line is 'ROLE[,ROLE] TOKEN' (or a token alone)"));
    }
    for (const TokenTable::Entry& e : table.entries) {
      if (e.token == entry.token)
        return absl::InvalidArgumentError(absl::StrCat(where, "the same token as line ", e.line,
                                                       "; give it once, with all its roles"));
    }
    table.entries.push_back(std::move(entry));
  }
  if (table.entries.empty())
    return absl::InvalidArgumentError(absl::StrCat("--token-file: ", token_file, " has no token"));
  if (table.legacy_lines > 0) {
    LOG(WARNING) << token_file << ": " << table.legacy_lines
                 << " token(s) without a role hold every role (user, worker, admin); write "
                    "'user TOKEN', 'worker TOKEN' or 'admin TOKEN' per line (docs/service.md)";
  }
  return table;
}

grpc::Status CheckToken(const grpc::ServerContext& context, const TokenTable& tokens, Role role,
                        int* token_line) {
  if (token_line != nullptr) *token_line = 0;
  if (tokens.empty()) return grpc::Status::OK;
  const auto& md = context.client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "a bearer token is required (--token-file or MAL_TOKEN)");
  }
  const absl::string_view header(it->second.data(), it->second.size());
  const absl::string_view prefix = "Bearer ";
  const TokenTable::Entry* match = nullptr;
  // The scheme is case-insensitive (RFC 7235).
  if (header.size() > prefix.size() &&
      absl::EqualsIgnoreCase(header.substr(0, prefix.size()), prefix)) {
    const absl::string_view given = header.substr(prefix.size());
    // Every entry is compared, so timing does not tell which one matched.
    for (const TokenTable::Entry& e : tokens.entries)
      if (ConstantTimeEqual(given, e.token)) match = &e;
  }
  if (match == nullptr)
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "the bearer token is not accepted");
  unsigned allowed = match->roles;
  if (allowed & static_cast<unsigned>(Role::kAdmin)) allowed |= static_cast<unsigned>(Role::kUser);
  if ((allowed & static_cast<unsigned>(role)) == 0) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        absl::StrCat("this call needs a token with the ", RoleName(role),
                                     " role; this token has: ", RoleNames(match->roles)));
  }
  if (token_line != nullptr) *token_line = match->line;
  return grpc::Status::OK;
}

void ConfigureServer(grpc::ServerBuilder& builder) {
  // gRPC sets SO_REUSEPORT by default: a second server on a port in use would start and share it
  // (calls alternating between the two). Refuse instead.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, kKeepaliveTimeMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, kKeepaliveTimeoutMs);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             kServerMinPingIntervalMs);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
}

void SetDeadline(grpc::ClientContext& context, std::chrono::milliseconds timeout) {
  context.set_deadline(std::chrono::system_clock::now() + timeout);
}

}  // namespace mal::rpc
