// The timeline's host side: kernel names shortened from their mangled form, the table's stream
// indices, offsets and totals. (Recording needs CUPTI and a GPU; this binary is built without
// CUPTI, and the recorder must say so.)
#include "compute_node/cuda/tools/kernel_timeline.h"

#include "gtest/gtest.h"

namespace ultramem::cuda {
namespace {

TEST(KernelTimeline, ShortNames) {
  EXPECT_EQ(KernelShortName("_ZN8ultramem4cuda19AttentionWarpKernelILi64ELi4ELi4EEEvNS0_17AttentionItemArgsE"),
            "AttentionWarpKernel<64, 4, 4>");
  EXPECT_EQ(KernelShortName("_ZN8ultramem4cuda12_GLOBAL__N_111EmbedKernelEPKfi"), "EmbedKernel");
  EXPECT_EQ(KernelShortName("nvjet_sm90_tss_64x8_64x16_1x2_h_badd_TNT"), "nvjet_sm90_tss_64x8_64x16_1x2_h_badd_TNT");
  EXPECT_EQ(KernelShortName(nullptr), "?");
}

TEST(KernelTimeline, TableOffsetsStreamsAndSpan) {
  const std::vector<KernelSpan> spans = {
      {1000000, 1002500, 7, "EmbedKernel"},
      {1012500, 1016800, 7, "GemvStagedKernel<true, false, false, false>"},
      {1013000, 1030000, 9, "MemoryTopMKernel"},
  };
  const std::string t = FormatKernelTimeline(spans);
  EXPECT_NE(t.find("     0.00      2.50     2.50      0  EmbedKernel"), std::string::npos) << t;
  EXPECT_NE(t.find("    12.50     16.80     4.30      0  GemvStagedKernel"), std::string::npos) << t;
  EXPECT_NE(t.find("    13.00     30.00    17.00      1  MemoryTopMKernel"), std::string::npos) << t;
  EXPECT_NE(t.find("3 kernels on 2 streams, 30.00 us from the first start to the last end"), std::string::npos) << t;
  EXPECT_EQ(FormatKernelTimeline({}), "no kernels\n");
}

TEST(KernelTimeline, WithoutCuptiTheRecorderSaysSo) {
  if (KernelTimelineAvailable()) GTEST_SKIP() << "built with CUPTI";
  bool ran = false;
  auto r = RecordKernelTimeline([&] {
    ran = true;
    return absl::OkStatus();
  });
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_FALSE(ran);
}

}  // namespace
}  // namespace ultramem::cuda
