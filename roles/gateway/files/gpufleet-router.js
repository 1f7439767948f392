// gpufleet.serving gateway: the fleet tier's router for a fleet of several
// models (README.md, "Many models"). Installed by the gateway role; njs, the
// JavaScript module of nginx (Debian's libnginx-mod-http-js).
//
// This file holds no fleet data: the site file gives the served names
// ($gpufleet_served), the model -> upstream table (map $gpufleet_model
// $gpufleet_pool) and the upstreams with their models ($gpufleet_pools,
// "upstream=model ..."). Its handlers:
//   route   reads the request's JSON body, takes "model", and redirects the
//           request inside nginx to that model's upstream (@<upstream>), where
//           proxy_pass sends the buffered body on and streams the answer back;
//   models  /v1/models: every pool's own list, merged;
//   health  /health: 200 when every model has a GPU server that answers.
// Keys, limits and TLS are nginx's, in the location before a handler runs.

function reply(r, code, value) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(code, JSON.stringify(value) + '\n');
}

function refuse(r, code, type, message, param, errorCode) {
    reply(r, code, {error: {message: message, type: type, param: param || null, code: errorCode || code}});
}

function served(r) {
    return r.variables.gpufleet_served || '';
}

function route(r) {
    var text;
    try {
        text = r.requestText;
    } catch (e) {
        text = undefined;
    }
    if (text === undefined || text === null) {
        // A body nginx kept in a file (larger than client_body_buffer_size,
        // which the site file sets to client_max_body_size) or none at all.
        refuse(r, 400, 'invalid_request_error',
               'the request needs a JSON body that names a model; this gateway serves: ' + served(r), 'model');
        return;
    }
    var request;
    try {
        request = JSON.parse(text);
    } catch (e) {
        refuse(r, 400, 'invalid_request_error', 'the request body is not JSON', null);
        return;
    }
    var model = (request !== null && typeof request === 'object' && typeof request.model === 'string') ? request.model : '';
    if (model === '') {
        refuse(r, 400, 'invalid_request_error',
               'name the model in the request ("model"); this gateway serves: ' + served(r), 'model');
        return;
    }
    r.variables.gpufleet_model = model;
    var upstream = r.variables.gpufleet_pool;
    if (!upstream) {
        refuse(r, 404, 'invalid_request_error',
               'The model `' + model.slice(0, 200) + '` does not exist; this gateway serves: ' + served(r),
               'model', 'model_not_found');
        return;
    }
    r.internalRedirect('@' + upstream);
}

// The upstreams and their models, from $gpufleet_pools ("upstream=model ...").
function pools(r) {
    return (r.variables.gpufleet_pools || '').split(' ').filter(function (pair) { return pair.indexOf('=') > 0; })
        .map(function (pair) { var at = pair.indexOf('='); return {upstream: pair.slice(0, at), model: pair.slice(at + 1)}; });
}

// One subrequest per upstream to the internal location /_gpufleet/<what>/<upstream>.
function ask(r, what) {
    return Promise.all(pools(r).map(function (pool) {
        return r.subrequest('/_gpufleet/' + what + '/' + pool.upstream, {method: 'GET'})
            .then(function (answer) { return {model: pool.model, status: answer.status, text: answer.responseText}; },
                  function () { return {model: pool.model, status: 0, text: ''}; });
    }));
}

function models(r) {
    ask(r, 'models').then(function (replies) {
        var data = [];
        var seen = {};
        replies.forEach(function (one) {
            if (one.status !== 200) {
                return;
            }
            var list;
            try {
                list = JSON.parse(one.text).data;
            } catch (e) {
                return;
            }
            (Array.isArray(list) ? list : []).forEach(function (item) {
                if (item && typeof item.id === 'string' && !seen[item.id]) {
                    seen[item.id] = true;
                    data.push(item);
                }
            });
        });
        if (data.length === 0) {
            refuse(r, 503, 'server_error', 'no model of this gateway has a GPU server that answers', null);
            return;
        }
        reply(r, 200, {object: 'list', data: data});
    });
}

function health(r) {
    ask(r, 'health').then(function (replies) {
        var state = {};
        var down = 0;
        replies.forEach(function (one) {
            var ok = one.status === 200;
            state[one.model] = ok ? 'ok' : 'unavailable';
            down += ok ? 0 : 1;
        });
        reply(r, down === 0 ? 200 : 503, {status: down === 0 ? 'ok' : 'unavailable', models: state});
    });
}

export default {route, models, health};
