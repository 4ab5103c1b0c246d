// The package root is the compat API: an npm alias replaces @matrix-org/matrix-sdk-crypto-nodejs
// as a whole package, so its root must be what code written for it imports.
'use strict';
module.exports = require('matrix-crypto-node/compat');
