'use strict';
// Loaded with `node -r` before mongo-express's app.js (localstack/servers/mongo_express.py does this).
//
// Why: mongo-express 1.0.0 prints its whole connection string, password included,
// when it cannot connect ("Could not connect to database using connectionString: ...").
// The local stack therefore gives it a URL without credentials and passes the user
// and password here, as the MongoDB driver's `auth` option, so no log line can
// carry them.
const path = require('path');

const username = process.env.LOCALSTACK_MONGO_USERNAME;
const password = process.env.LOCALSTACK_MONGO_PASSWORD;
delete process.env.LOCALSTACK_MONGO_PASSWORD;

if (username) {
  // The same module instance mongo-express's lib/db.js will require.
  // (resolved from app.js's directory; require.main is not set yet while preloading).
  const appDir = path.dirname(path.resolve(process.argv[1]));
  const mongodb = require(require.resolve('mongodb', { paths: [appDir] }));
  const connect = mongodb.MongoClient.connect;
  mongodb.MongoClient.connect = function connectWithAuth(url, options, ...rest) {
    return connect.call(this, url, { ...(options || {}), auth: { username, password } }, ...rest);
  };
}
