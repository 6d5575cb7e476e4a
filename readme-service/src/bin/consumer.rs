messaging_core::main!(order_service, |runtime| runtime.state(order_service::Db));
