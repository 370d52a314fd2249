// moe-generate: writes text with a model that moe-train saved: moe-generate CHECKPOINT --prompt TEXT
// [options], on one rank or under mpirun on ranks that share the checkpoint's experts.
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/command_line.h"
#include "launch/generate/generator.h"
#include "launch/generate/text_tokenizer.h"
#include "parallel/mpi/mpi_communicator.h"

namespace {

const char* kUsage = R"(usage: [mpirun -np N] moe-generate CHECKPOINT --prompt TEXT [options]

Writes a continuation of TEXT with the model of CHECKPOINT, a checkpoint directory that moe-train wrote
(RUN/checkpoints/step_N; moe-ckpt ls RUN lists them), or a run directory RUN, whose newest complete
checkpoint it takes (as moe-ckpt does). The model is built as the
run config recorded in the checkpoint says. Under mpirun the N ranks share the experts (N must divide
moe.num_experts) and decode in lockstep, the MoE layers exchanging tokens as in training; rank 0 prints.
Every MoE layer routes dropless (no token dropped). Each step reuses the earlier tokens' keys and values
(a KV cache).

Rank 0 prints the prompt and the new text as it is written, then one line with the speed: the prompt's
tokens per second (prefill) and the new tokens per second (decode, after the first).

options:
  --prompt TEXT            the text to continue (required, at least one token)
  --max-new-tokens N       at most N new tokens (default 64); the prompt + N must fit the model: with
                           learned positions model.seq_len tokens, with rotary positions 8 x model.seq_len
                           (beyond seq_len the model extrapolates positions it was never trained on)
  --temperature T          0 (the default): greedy, the most likely token each step; T > 0: sample from
                           softmax(logits / T)
  --top-k K                sample among the K most likely tokens only (needs T > 0; default 0: all)
  --top-p P                sample among the fewest most likely tokens whose probability reaches P, in
                           (0, 1] (needs T > 0; default 1: all)
  --seed S                 the sampling's seed (default 0): the same seed gives the same text, on any
                           number of ranks
  --tokenizer PATH         a Hugging Face tokenizer.json, or a SentencePiece .model (applied by the
                           moe-tokenize beside moe-generate); default: the run config's data.tokenizer if
                           set, else bytes (each byte a token; end of document 256, as moe-tokenize's)
  --ignore-eos             go on after the tokenizer's end-of-document token (default: stop there; the
                           token itself is not printed)
  --help                   this text

exit status: 0 on success; 2 for a bad argument, a missing or damaged checkpoint, a prompt the model
cannot take; 1 for any other error.
)";

constexpr const char* kAccepted = "accepted: CHECKPOINT --prompt TEXT [--max-new-tokens N] [--temperature T] "
                                  "[--top-k K] [--top-p P] [--seed S] [--tokenizer PATH] [--ignore-eos], or --help";

struct Options {
  std::string checkpoint, prompt, tokenizer;
  bool has_prompt = false, has_tokenizer = false, ignore_eos = false;
  moe::GenerateOptions generate;
};

Options parse(const std::vector<std::string>& args) {
  Options o;
  bool sampling_option = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> const std::string& {
      MOE_REQUIRE(i + 1 < args.size(), a, " needs a value; ", kAccepted);
      return args[++i];
    };
    moe::SamplingOptions& s = o.generate.sampling;
    if (a == "--prompt") {
      o.prompt = value();
      o.has_prompt = true;
    } else if (a == "--max-new-tokens") {
      o.generate.max_new_tokens = moe::parse_integer_argument(a, value(), 0, 1 << 20);
    } else if (a == "--temperature") {
      s.temperature = moe::parse_number_argument(a, value(), 0, HUGE_VAL);
    } else if (a == "--top-k") {
      s.top_k = moe::parse_integer_argument(a, value(), 0, INT32_MAX);
      sampling_option = true;
    } else if (a == "--top-p") {
      const std::string& text = value();
      s.top_p = moe::parse_number_argument(a, text, 0, 1);
      MOE_REQUIRE(s.top_p > 0, a, " ", text, ": out of range; expected a number in (0, 1]");
      sampling_option = true;
    } else if (a == "--seed") {
      s.seed = static_cast<uint64_t>(moe::parse_integer_argument(a, value(), 0, INT64_MAX));
    } else if (a == "--tokenizer") {
      o.tokenizer = value();
      o.has_tokenizer = true;
    } else if (a == "--ignore-eos") {
      o.ignore_eos = true;
    } else if (!a.empty() && a[0] == '-') {
      throw moe::InvalidArgument("unknown argument '" + a + "'; " + kAccepted);
    } else {
      MOE_REQUIRE(o.checkpoint.empty(), "two checkpoints given ('", o.checkpoint, "' and '", a, "'); ", kAccepted);
      o.checkpoint = a;
    }
  }
  MOE_REQUIRE(!o.checkpoint.empty(), "missing CHECKPOINT; usage: moe-generate CHECKPOINT --prompt TEXT (see --help)");
  MOE_REQUIRE(o.has_prompt, "missing --prompt TEXT; usage: moe-generate CHECKPOINT --prompt TEXT (see --help)");
  MOE_REQUIRE(!sampling_option || o.generate.sampling.temperature > 0,
              "--top-k and --top-p choose what is sampled, but --temperature is 0 (greedy); give --temperature T > 0");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  moe::MpiSession mpi(&argc, &argv);
  std::unique_ptr<moe::Communicator> world = moe::make_mpi_world_communicator();
  const int rank = world->rank();
  // Every failure below is seen by every rank alike (the same arguments and files, or agreed on by the
  // Generator), so rank 0 alone prints it and every rank exits without a collective.
  auto fail = [&](int status, const std::string& message) {
    if (rank == 0) std::fprintf(stderr, "moe-generate: %s\n", message.c_str());
    return status;
  };
  const std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& a : args)
    if (a == "--help" || a == "-h") {
      if (rank == 0) std::fputs(kUsage, stdout);
      return 0;
    }
  try {
    Options o = parse(args);
    moe::Generator generator(o.checkpoint, *world);
    if (rank == 0 && generator.checkpoint_dir() != o.checkpoint)
      std::fprintf(stderr, "moe-generate: using %s, the newest complete checkpoint of %s\n",
                   generator.checkpoint_dir().c_str(), o.checkpoint.c_str());
    const moe::TrainConfig& cfg = generator.config();
    const std::unique_ptr<moe::Tokenizer> tokenizer =
        moe::open_text_tokenizer(o.has_tokenizer ? o.tokenizer : cfg.data.tokenizer,
                                 moe::moe_tokenize_beside_this_program());
    std::vector<int32_t> prompt;
    tokenizer->encode(o.prompt, prompt);
    const int64_t end = tokenizer->record().end_of_document;
    o.generate.end_of_document = o.ignore_eos || end >= cfg.model.vocab_size ? -1 : static_cast<int32_t>(end);
    o.generate.choosable = tokenizer->vocab_size();  // a padded vocabulary's extra rows have no text
    generator.check(prompt, o.generate);  // before anything is printed

    // The text of the prompt and the new tokens so far, printed as it grows: decoding the whole sequence
    // each time, as a tokenizer may join a token's text with the previous one's (a character's bytes, the
    // space a word piece starts with); a text that does not extend the printed one waits for more tokens.
    // Rank 0 alone decodes: a failure there (a tokenizer process that fails) is reported after the
    // generation, which the other ranks go on with in lockstep.
    std::vector<int32_t> sequence = prompt;
    std::string shown, decode_error;
    auto show = [&] {
      if (!decode_error.empty()) return;
      try {
        const std::string text = tokenizer->decode(sequence);
        if (!text.starts_with(shown)) return;
        std::printf("%s", text.c_str() + shown.size());
        std::fflush(stdout);
        shown = text;
      } catch (const std::exception& e) {
        decode_error = e.what();
      }
    };
    if (rank == 0) show();
    const moe::GenerateResult r = generator.generate(prompt, o.generate, [&](int32_t token) {
      if (rank != 0) return;
      sequence.push_back(token);
      show();
    });
    if (rank == 0) {
      std::printf("\n");
      std::printf("moe-generate: %lld prompt tokens in %.3f s (%.1f tokens/s prefill), %lld new tokens%s; decode "
                  "%.1f tokens/s (%lld steps in %.3f s) on %d rank(s)\n",
                  static_cast<long long>(r.prompt_tokens), r.prefill_seconds,
                  r.prefill_seconds > 0 ? r.prompt_tokens / r.prefill_seconds : 0.0,
                  static_cast<long long>(r.tokens.size()), r.ended ? " (stopped at the end-of-document token)" : "",
                  r.decode_seconds > 0 ? r.decode_steps / r.decode_seconds : 0.0,
                  static_cast<long long>(r.decode_steps), r.decode_seconds, world->size());
    }
    return decode_error.empty() ? 0 : fail(1, "cannot decode the new tokens: " + decode_error);
  } catch (const moe::InvalidArgument& e) {
    return fail(2, e.what());
  } catch (const std::exception& e) {
    // Possibly seen by this rank alone while the others wait in a collective: take them down.
    std::fprintf(stderr, "moe-generate: rank %d: error: %s\n", rank, e.what());
    std::fflush(stderr);
    if (world->size() > 1) moe::mpi_abort(1);
    return 1;
  }
}
