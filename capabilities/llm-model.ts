/**
 * The model used when config.yaml names none (capabilities/config.ts), and the one the bot's advice
 * suggests. Here, beside the config, because capabilities/ imports nothing above it. A module of its own, without imports: the config loader is start-up code in the bot
 * bundle, and the Anthropic SDK must not be (bots/device-main.ts loads it on the first LLM call).
 *
 * It must not be in the SDK's deprecated-model table (the SDK then warns on every call) nor retired
 * by the API: test/llm-model.test.ts.
 */
export const DEFAULT_LLM_MODEL = 'claude-sonnet-5-5';
