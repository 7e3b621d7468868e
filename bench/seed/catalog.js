'use strict';
// The operations the seed's route accepts: the image operations of the
// studio's catalog with their fal model and cost in credits.
module.exports = {
  edit: { model: 'fal-ai/nano-banana/edit', cost: 1 },
  generate: { model: 'fal-ai/flux/dev', cost: 1 },
  upscale: { model: 'fal-ai/clarity-upscaler', cost: 2 },
  'remove-bg': { model: 'fal-ai/birefnet/v2', cost: 1 },
  'natural-light': { model: 'fal-ai/iclight-v2', cost: 1 },
};
