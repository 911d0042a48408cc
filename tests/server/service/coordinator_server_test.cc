// The coordinator's gRPC services in-process: a CoordinatorServer on 127.0.0.1:0 and real stubs,
// the tests acting as client and as worker.

#include "server/coordinator_server.h"

#include <gmock/gmock.h>
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "common/spec/spec.h"
#include "mal/v1/service.grpc.pb.h"
#include "tests/test_util.h"

namespace mal::server {
namespace {

using ::testing::HasSubstr;

class CoordinatorServerTest : public ::testing::Test {
 protected:
  void Start(const std::string& token_file = "", CoordinatorServer::Options o = {}) {
    o.listen = "127.0.0.1:0";
    o.data_dir = dir_ / "data";
    o.lease_ms = 2000;
    o.heartbeat_ms = 100;
    o.security.token_file = token_file;
    auto s = CoordinatorServer::Start(o);
    ASSERT_TRUE(s.ok()) << s.status();
    server_ = std::move(*s);
    auto channel = rpc::MakeChannel("127.0.0.1:" + std::to_string(server_->port()));
    client_ = v1::Coordinator::NewStub(channel);
    worker_ = v1::WorkerGateway::NewStub(channel);
  }
  std::string Submit() {
    auto spec = ParseSpecYaml(R"(
name: inproc
method: stl
data: {au: {format: synthface, root: /data/sf}}
model: {backbone: small_cnn, input: 32, resize: 36}
cv: {only: [1]}
)",
                              "inproc.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    v1::SubmitExperimentRequest req;
    *req.mutable_spec() = *spec;
    v1::SubmitExperimentResponse resp;
    grpc::ClientContext ctx;
    grpc::Status s = client_->SubmitExperiment(&ctx, req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return resp.experiment_id();
  }

  testing::TempDir dir_;
  std::unique_ptr<CoordinatorServer> server_;
  std::unique_ptr<v1::Coordinator::Stub> client_;
  std::unique_ptr<v1::WorkerGateway::Stub> worker_;
};

TEST_F(CoordinatorServerTest, AWatchSeesARunFromAssignmentToTheEndEvent) {
  Start();
  const std::string id = Submit();
  std::vector<std::string> seen;
  std::thread watcher([&] {
    v1::WatchRequest req;
    req.set_experiment_id(id);
    req.add_kinds("state");
    req.add_kinds("end");
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = client_->Watch(&ctx, req);
    v1::WatchResponse r;
    while (reader->Read(&r)) {
      if (r.has_event() && r.event().has_state()) seen.push_back(r.event().state().state());
      if (r.has_event() && r.event().has_end()) seen.push_back("END");
    }
    EXPECT_TRUE(reader->Finish().ok());
  });
  v1::RegisterRequest reg;
  reg.set_name("w1");
  reg.set_slots(1);
  v1::RegisterResponse registered;
  grpc::ClientContext c1;
  ASSERT_TRUE(worker_->Register(&c1, reg, &registered).ok());
  ASSERT_EQ(registered.session().size(), 64u);  // 32 random bytes, hex
  auto as = [](grpc::ClientContext& ctx, const std::string& name, const std::string& session) {
    ctx.AddMetadata("mal-worker", name);
    ctx.AddMetadata("mal-worker-session", session);
  };
  v1::HeartbeatRequest beat;
  beat.set_name("w1");
  beat.set_free_slots(1);
  v1::HeartbeatResponse assigned;
  grpc::ClientContext c2;
  as(c2, "w1", registered.session());
  ASSERT_TRUE(worker_->Heartbeat(&c2, beat, &assigned).ok());
  ASSERT_EQ(assigned.assignments_size(), 1);
  const v1::Assignment& a = assigned.assignments(0);
  v1::CompleteRunRequest done;
  done.set_run_id(a.run_id());
  done.set_lease_epoch(a.lease_epoch());  // GetExperiment shows it to every user
  done.mutable_result()->set_test_mean_f1(0.99);
  v1::Ack ack;
  // Issue 14: a client that never registered cannot complete the run with the public epoch, a
  // second worker cannot touch the first one's run, a wrong session is refused; nothing changes.
  grpc::ClientContext forged;
  EXPECT_EQ(worker_->CompleteRun(&forged, done, &ack).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext wrong;
  as(wrong, "w1", std::string(64, '0'));
  EXPECT_EQ(worker_->CompleteRun(&wrong, done, &ack).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::RegisterRequest other = reg;
  other.set_name("w2");
  v1::RegisterResponse other_registered;
  grpc::ClientContext c4;
  ASSERT_TRUE(worker_->Register(&c4, other, &other_registered).ok());
  grpc::ClientContext foreign;
  as(foreign, "w2", other_registered.session());
  EXPECT_EQ(worker_->CompleteRun(&foreign, done, &ack).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  // A heartbeat under w1's name from w2 (its own session) is refused too: no run goes back.
  v1::HeartbeatRequest impostor;
  impostor.set_name("w1");
  grpc::ClientContext c5;
  as(c5, "w2", other_registered.session());
  v1::HeartbeatResponse ignored;
  EXPECT_EQ(worker_->Heartbeat(&c5, impostor, &ignored).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext c6;
  as(c6, "w1", std::string(64, 'f'));
  EXPECT_EQ(worker_->Heartbeat(&c6, impostor, &ignored).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  done.mutable_result()->set_test_mean_f1(0.5);
  grpc::ClientContext c3;
  as(c3, "w1", registered.session());
  ASSERT_TRUE(worker_->CompleteRun(&c3, done, &ack).ok());
  watcher.join();
  EXPECT_THAT(seen, ::testing::ElementsAre("RUNNING", "ASSIGNED", "SUCCEEDED", "SUCCEEDED", "END"));
}

TEST_F(CoordinatorServerTest, TokensAreCheckedAndASecondServerOnTheDirectoryIsRefused) {
  testing::WriteText(dir_ / "tokens", "s3cret\n");
  Start(dir_ / "tokens");
  v1::ListExperimentsRequest req;
  v1::ListExperimentsResponse resp;
  grpc::ClientContext anonymous;
  EXPECT_EQ(client_->ListExperiments(&anonymous, req, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext with_token;
  with_token.AddMetadata("authorization", "Bearer s3cret");
  EXPECT_TRUE(client_->ListExperiments(&with_token, req, &resp).ok());

  CoordinatorServer::Options o;
  o.listen = "127.0.0.1:0";
  o.data_dir = dir_ / "data";
  auto second = CoordinatorServer::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("another mal-coordinator"));
}

// A state database lost, emptied or damaged beside a data directory's artifacts: the start is
// refused naming the file (an empty one numbered experiments from exp-1 again and served the old
// runs' logs as theirs; damaged pages were found only by the one call that read them).
TEST_F(CoordinatorServerTest, ALostOrDamagedStateDatabaseIsRefusedAtTheStart) {
  Start();
  const std::string id = Submit();
  ASSERT_EQ(id, "exp-1");
  testing::WriteText(dir_ / "data/artifacts/exp-1/trial-0/fold-1/log.txt", "epoch 1\n");
  server_->Shutdown();
  server_.reset();
  const std::string db = dir_ / "data/state.db";
  CoordinatorServer::Options o;
  o.listen = "127.0.0.1:0";
  o.data_dir = dir_ / "data";
  {
    std::filesystem::resize_file(db, 0);
    auto emptied = CoordinatorServer::Start(o);
    ASSERT_FALSE(emptied.ok());
    EXPECT_EQ(emptied.status().code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(emptied.status().message()),
                HasSubstr(db + " is empty but " + (dir_ / "data") +
                          "/artifacts holds exp-1: restore the state.db that goes with them"));
    std::filesystem::remove(db);
    std::filesystem::remove(db + "-wal");
    std::filesystem::remove(db + "-shm");
    auto lost = CoordinatorServer::Start(o);
    ASSERT_FALSE(lost.ok());
    EXPECT_THAT(std::string(lost.status().message()), HasSubstr(db + " is missing but "));
    // That start created a new database (another coordinator's, a backup older than the
    // artifacts: the same): it knows none of them.
    auto behind = CoordinatorServer::Start(o);
    ASSERT_FALSE(behind.ok());
    EXPECT_THAT(std::string(behind.status().message()),
                HasSubstr(db + " is behind the artifacts (it knows 0 experiment(s)) but "));
  }
  // Not a database at all: the message names the file.
  testing::WriteText(db, std::string(8192, 'x'));
  auto garbage = CoordinatorServer::Start(o);
  ASSERT_FALSE(garbage.ok());
  EXPECT_THAT(std::string(garbage.status().message()), HasSubstr(db + ": "));
}

// Roles (issue 14): a user token cannot act as a worker, a worker token cannot submit or read
// experiments, deleting a model version needs admin; each refusal is PERMISSION_DENIED naming
// the role, an unknown token UNAUTHENTICATED.
TEST_F(CoordinatorServerTest, TokenRolesSeparateUsersWorkersAndAdmins) {
  testing::WriteText(dir_ / "tokens", "user u-tok\nworker w-tok\nadmin a-tok\n");
  Start(dir_ / "tokens");
  auto with = [](grpc::ClientContext& ctx, const std::string& token) {
    ctx.AddMetadata("authorization", "Bearer " + token);
  };
  v1::RegisterRequest reg;
  reg.set_name("w1");
  reg.set_slots(1);
  reg.set_instance("i1");
  v1::RegisterResponse reg_resp;
  {
    grpc::ClientContext ctx;
    with(ctx, "u-tok");
    grpc::Status s = worker_->Register(&ctx, reg, &reg_resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(s.error_message(), HasSubstr("needs a token with the worker role"));
    EXPECT_THAT(s.error_message(), HasSubstr("this token has: user"));
  }
  {
    grpc::ClientContext ctx;
    with(ctx, "w-tok");
    EXPECT_TRUE(worker_->Register(&ctx, reg, &reg_resp).ok());
  }
  {
    grpc::ClientContext ctx;
    with(ctx, "w-tok");
    v1::SubmitExperimentRequest req;
    v1::SubmitExperimentResponse resp;
    grpc::Status s = client_->SubmitExperiment(&ctx, req, &resp);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
    EXPECT_THAT(s.error_message(), HasSubstr("the user role"));
    grpc::ClientContext list_ctx;
    with(list_ctx, "w-tok");
    v1::ListExperimentsResponse list;
    EXPECT_EQ(client_->ListExperiments(&list_ctx, {}, &list).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  for (const char* token : {"u-tok", "a-tok"}) {  // admin includes user
    grpc::ClientContext ctx;
    with(ctx, token);
    v1::ListExperimentsResponse list;
    EXPECT_TRUE(client_->ListExperiments(&ctx, {}, &list).ok()) << token;
  }
  {
    grpc::ClientContext ctx;
    with(ctx, "u-tok-and-more");
    v1::ListExperimentsResponse list;
    EXPECT_EQ(client_->ListExperiments(&ctx, {}, &list).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  auto registry =
      v1::ModelRegistry::NewStub(rpc::MakeChannel("127.0.0.1:" + std::to_string(server_->port())));
  v1::DeleteModelRequest del;
  del.set_model("nothing:1");
  v1::ModelInfo info;
  grpc::ClientContext user_ctx;
  with(user_ctx, "u-tok");
  grpc::Status by_user = registry->DeleteModel(&user_ctx, del, &info);
  EXPECT_EQ(by_user.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(by_user.error_message(), HasSubstr("the admin role"));
  grpc::ClientContext admin_ctx;
  with(admin_ctx, "a-tok");
  EXPECT_EQ(registry->DeleteModel(&admin_ctx, del, &info).error_code(),
            grpc::StatusCode::NOT_FOUND);  // allowed; there is no such model
}

// Data roots and the submission rate limit (issue 14), through the gRPC service: a dataset
// outside the roots is INVALID_ARGUMENT naming the field, the third submission within a minute
// RESOURCE_EXHAUSTED with the wait, and nothing refused is stored.
TEST_F(CoordinatorServerTest, DataRootsAndSubmissionRateLimit) {
  CoordinatorServer::Options o;
  o.data_roots = {"/data"};
  o.submit_per_minute = 2;
  Start("", o);
  auto submit = [&](const std::string& root, const std::string& request_id = "") {
    auto spec = ParseSpecYaml("name: r\nmethod: stl\ndata: {au: {format: synthface, root: " + root +
                                  "}}\nmodel: {backbone: small_cnn, input: 32, resize: 36}\n",
                              "s.yaml");
    EXPECT_TRUE(spec.ok()) << spec.status();
    v1::SubmitExperimentRequest req;
    *req.mutable_spec() = *spec;
    req.set_request_id(request_id);
    v1::SubmitExperimentResponse resp;
    grpc::ClientContext ctx;
    return client_->SubmitExperiment(&ctx, req, &resp);
  };
  grpc::Status outside = submit("/data/../etc");
  EXPECT_EQ(outside.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(outside.error_message(), HasSubstr("data.au.root: /data/../etc is outside"));
  EXPECT_TRUE(submit("/data/sf", "once").ok());
  grpc::Status limited = submit("/data/sf");
  EXPECT_EQ(limited.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(limited.error_message(), HasSubstr("more than 2 submission(s) in a minute"));
  EXPECT_THAT(limited.error_message(), HasSubstr("retry in"));
  // A retry whose answer was lost (a known request id) creates nothing and is never limited.
  EXPECT_TRUE(submit("/data/sf", "once").ok());
  grpc::ClientContext ctx;
  v1::ListExperimentsResponse list;
  ASSERT_TRUE(client_->ListExperiments(&ctx, {}, &list).ok());
  EXPECT_EQ(list.total(), 1);
}

TEST_F(CoordinatorServerTest, ShutdownEndsAnOpenWatchWithTheSeqToResumeFrom) {
  Start();
  const std::string id = Submit();
  grpc::Status ended;
  std::thread watcher([&] {
    v1::WatchRequest req;
    req.set_experiment_id(id);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    auto reader = client_->Watch(&ctx, req);
    v1::WatchResponse r;
    while (reader->Read(&r)) {
    }
    ended = reader->Finish();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  server_->Shutdown(std::chrono::seconds(2));
  watcher.join();
  EXPECT_EQ(ended.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(ended.error_message(), HasSubstr("resume from seq"));
}

}  // namespace
}  // namespace mal::server
