#ifndef MAL_COMMON_PREDICT_TRACK_IDS_H_
#define MAL_COMMON_PREDICT_TRACK_IDS_H_

#include "common/image/face_tracker.h"
#include "mal/v1/inference.pb.h"

namespace mal::predict {

// Replaces each face's face_id in `result` with its track id from `tracker` (the frames of one
// stream or video, in order): the streaming RPC and malctl/mal-worker predict's video frames.
void AssignTrackIds(image::FaceTracker& tracker, v1::ImageResult& result);

}  // namespace mal::predict

#endif  // MAL_COMMON_PREDICT_TRACK_IDS_H_
