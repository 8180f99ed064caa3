from vlmjax.train.main import run

run()
